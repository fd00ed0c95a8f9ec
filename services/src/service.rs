//! What every service of the pipeline starts with: its [`App`], configured
//! from the environment, and its own settings from environment variables.

use stream_core::{App, AppBuilder, Error, Result};

/// The broker a service uses when `STROM_BROKER` is not set.
pub const DEFAULT_BROKER: &str = "kafka://127.0.0.1:9092";

/// The app of service `id`: `STROM_BROKER` (default [`DEFAULT_BROKER`]),
/// `STROM_WEB_PORT` (default `web_port`) and the other `STROM_*` variables,
/// with logging set up (`RUST_LOG`).
///
/// The pipeline's producers wait at most 1 ms to batch (`linger.ms`, Strom's
/// default is 5): at a sensor fleet's rates a reading crosses two topics, and
/// the wait is paid at each (`STROM_KAFKA_LINGER_MS` overrides it).
pub fn app(id: &str, web_port: u16) -> Result<App> {
    app_with(id, web_port, |b| b)
}

/// [`app`], with the service's own defaults set on the builder before the
/// environment is read (so `STROM_*` variables still override them).
pub fn app_with(id: &str, web_port: u16, defaults: impl FnOnce(AppBuilder) -> AppBuilder) -> Result<App> {
    stream_core::init_logging();
    let builder = App::builder(id).broker(DEFAULT_BROKER).web_port(web_port).kafka("linger.ms", SERVICE_LINGER_MS);
    defaults(builder).env()?.build()
}

/// The services' `linger.ms`.
pub const SERVICE_LINGER_MS: &str = "1";

/// The environment variable `name`, or `default` when it is unset or empty.
pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty()).unwrap_or_else(|| default.to_owned())
}

/// The environment variable `name` parsed, or `default` when it is unset or
/// empty; a value that does not parse is a configuration error.
pub fn env_parse<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => {
            v.trim().parse().map_err(|_| Error::Config(format!("{name}={v:?} is not a valid value")))
        }
        _ => Ok(default),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn services_batch_for_at_most_a_millisecond_unless_told_otherwise() {
        let app = app("linger-test", 0).unwrap();
        let expected = std::env::var("STROM_KAFKA_LINGER_MS").unwrap_or_else(|_| SERVICE_LINGER_MS.to_owned());
        assert_eq!(app.config().kafka.get("linger.ms"), Some(&expected));
    }
}
