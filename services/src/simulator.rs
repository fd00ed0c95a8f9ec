//! The sensor simulator: temperature sensors publishing to MQTT in both forms
//! the pipeline accepts (README, "The sensor pipeline's services").
//!
//! Sensor `n` (from 1) publishes, every `1 / rate` seconds, a temperature
//! wandering around 20 °C:
//!
//! - odd `n`: the seed's form on `/sensor<n>/temp`,
//!   `{"timestamp": "1700000000.123", "value": "21"}`, integers from sensors
//!   1, 5, 9, ..., floats from 3, 7, 11, ...;
//! - even `n`: the richer form on `sensors/<n>/temperature`,
//!   `{"sensor": n, "temperature": 21.5, "unit": .., "timestamp": ..}`, the
//!   unit C, F or K and the timestamp RFC 3339, epoch seconds or epoch
//!   milliseconds, in varying combinations; integers from sensors 4, 8, 12, ....

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;
use stream_core::connect::mqtt::rumqttc::{AsyncClient, QoS};
use stream_core::connect::mqtt::{self, client_options};
use stream_core::metrics::prometheus_client::metrics::counter::Counter;
use stream_core::{BoxError, Result, Shutdown};

use crate::sensors::Unit;
use crate::service::{env_or, env_parse};

/// The simulator's settings, from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `MQTT_URL` (default `mqtt://127.0.0.1:1883`).
    pub mqtt_url: String,
    /// `SIMULATOR_CLIENT_ID` (default `sensor-simulator`).
    pub client_id: String,
    /// `MQTT_TOPIC_PREFIX`, before every MQTT topic (default none).
    pub topic_prefix: String,
    /// `SIMULATOR_SENSORS`: how many sensors (default 10).
    pub sensors: u32,
    /// `SIMULATOR_RATE`: readings per sensor per second (default 1).
    pub rate: f64,
    /// `SIMULATOR_LIMIT`: readings per sensor before it falls silent (default: no end).
    pub limit: Option<u64>,
}

impl Config {
    /// The settings from the environment variables named on the fields.
    pub fn from_env() -> Result<Config> {
        let rate: f64 = env_parse("SIMULATOR_RATE", 1.0)?;
        if !(rate > 0.0 && rate <= 10_000.0) {
            return Err(stream_core::Error::Config(format!("SIMULATOR_RATE={rate}: expected > 0 and <= 10000")));
        }
        Ok(Config {
            mqtt_url: env_or("MQTT_URL", mqtt::DEFAULT_URL),
            client_id: env_or("SIMULATOR_CLIENT_ID", "sensor-simulator"),
            topic_prefix: env_or("MQTT_TOPIC_PREFIX", ""),
            sensors: env_parse("SIMULATOR_SENSORS", 10)?,
            rate,
            limit: env_parse::<u64>("SIMULATOR_LIMIT", 0).map(|n| (n > 0).then_some(n))?,
        })
    }
}

/// One simulated sensor.
#[derive(Debug, Clone)]
pub struct Sensor {
    num: u32,
    celsius: f64,
    rng: u64,
}

impl Sensor {
    /// Sensor `num`, starting near 20 °C.
    pub fn new(num: u32) -> Sensor {
        let mut sensor = Sensor {
            num,
            celsius: 20.0,
            rng: 0x9E37_79B9_7F4A_7C15 ^ u64::from(num).wrapping_mul(0xA24B_AED4_963E_E407),
        };
        sensor.celsius += sensor.random() * 4.0 - 2.0;
        sensor
    }

    /// A number in [0, 1) (xorshift64*).
    fn random(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The next reading, taken at `now`: its MQTT topic (after `prefix`),
    /// its payload, and the temperature it says in Celsius.
    pub fn next(&mut self, prefix: &str, now: DateTime<Utc>) -> (String, String, f64) {
        self.celsius = (self.celsius + self.random() - 0.5).clamp(10.0, 30.0);
        let n = self.num;
        let integer = n % 4 == 1 || (n.is_multiple_of(4) && n > 0);
        if !n.is_multiple_of(2) {
            let value = if integer { self.celsius.round() } else { (self.celsius * 100.0).round() / 100.0 };
            let ts = format!("{}.{:03}", now.timestamp(), now.timestamp_subsec_millis());
            let payload = json!({"timestamp": ts, "value": value.to_string()});
            return (format!("{prefix}/sensor{n}/temp"), payload.to_string(), value);
        }
        let unit = [Unit::Celsius, Unit::Fahrenheit, Unit::Kelvin][(n / 2 % 3) as usize];
        let in_unit = unit.from_celsius(self.celsius);
        let temperature =
            if integer { json!(in_unit.round() as i64) } else { json!((in_unit * 100.0).round() / 100.0) };
        let timestamp = match (n / 2 + n / 6) % 3 {
            0 => json!(now.to_rfc3339_opts(SecondsFormat::Millis, true)),
            1 => json!(now.timestamp_millis() as f64 / 1000.0),
            _ => json!(now.timestamp_millis()),
        };
        let payload = json!({"sensor": n, "temperature": temperature, "unit": unit.symbol(), "timestamp": timestamp});
        let celsius = unit.to_celsius(temperature.as_f64().unwrap_or(in_unit));
        (format!("{prefix}sensors/{n}/temperature"), payload.to_string(), celsius)
    }
}

/// Declares on `app` the task `publish` that runs the simulator with
/// `config`, and its counter `strom_simulator_readings_published_total`.
pub fn serve(app: &stream_core::App, config: Config) {
    let published = Counter::default();
    app.metrics().register("simulator_readings_published", "Readings published to MQTT", published.clone());
    app.task("publish", move |shutdown| run(config.clone(), published.clone(), shutdown));
}

/// Publishes readings of `config.sensors` sensors at `config.rate` with QoS
/// 1 until `shutdown` (or the limit), counting them in `published`.
pub async fn run(config: Config, published: Counter, mut shutdown: Shutdown) -> Result<(), BoxError> {
    let mut options = client_options(&config.mqtt_url, &config.client_id)?;
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut connection) = AsyncClient::new(options, 1000);
    let poll = tokio::spawn(async move {
        loop {
            if let Err(e) = connection.poll().await {
                tracing::warn!(error = %e, "MQTT connection lost; reconnecting");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    });
    let mut sensors: Vec<Sensor> = (1..=config.sensors).map(Sensor::new).collect();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / config.rate));
    tracing::info!(sensors = config.sensors, rate = config.rate, url = %config.mqtt_url, "publishing");
    let mut rounds = 0u64;
    while config.limit.is_none_or(|limit| rounds < limit) {
        tokio::select! {
            _ = shutdown.wait() => break,
            _ = tick.tick() => {}
        }
        for sensor in &mut sensors {
            let (topic, payload, _) = sensor.next(&config.topic_prefix, Utc::now());
            client.publish(topic, QoS::AtLeastOnce, false, payload).await?;
            published.inc();
        }
        rounds += 1;
    }
    if !shutdown.is_requested() {
        tracing::info!(rounds, "limit reached; idle until stopped");
        shutdown.wait().await;
    }
    let _ = client.disconnect().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    poll.abort();
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::records::RawReading;
    use crate::sensors::parse;

    #[test]
    fn every_sensor_publishes_what_processing_understands() {
        let now = Utc::now();
        for n in 1..=24 {
            let mut sensor = Sensor::new(n);
            for _ in 0..50 {
                let (topic, payload, celsius) = sensor.next("pre/", now);
                let raw = RawReading {
                    mqtt_topic: topic.clone(),
                    payload: payload.clone(),
                    received_ms: now.timestamp_millis(),
                };
                let t = parse(&raw).unwrap_or_else(|e| panic!("{topic} {payload}: {e}"));
                assert_eq!(t.sensor_num, n);
                assert!((t.value - celsius).abs() < 1e-9, "{payload}: {} != {celsius}", t.value);
                assert!((t.timestamp_ms - now.timestamp_millis()).abs() <= 1, "{payload}");
                assert!((5.0..=35.0).contains(&t.value), "{payload}");
            }
        }
    }

    #[test]
    fn both_forms_and_all_kinds_of_values() {
        let now = Utc::now();
        let payloads: Vec<(String, String)> =
            (1..=6).map(|n| Sensor::new(n).next("", now)).map(|(t, p, _)| (t, p)).collect();
        assert!(payloads[0].0 == "/sensor1/temp" && payloads[0].1.contains(r#""value":""#));
        assert!(!payloads[0].1.contains(".0\"") && payloads[0].1.contains("\"timestamp\":\""));
        assert_eq!(payloads[1].0, "sensors/2/temperature");
        for unit in ["\"unit\":\"C\"", "\"unit\":\"F\"", "\"unit\":\"K\""] {
            assert!(payloads.iter().any(|(_, p)| p.contains(unit)), "{unit}");
        }
        assert!(payloads[3].1.contains(r#""sensor":4"#));
    }
}
