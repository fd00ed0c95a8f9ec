//! Both systems in one process: the sensor pipeline (the simulator, every
//! service and the API) and the earthquake pipeline (quake-source,
//! quake-loader and the live map), each service its own [`App`] (its own
//! consumer group, metrics and HTTP port, as when they run apart), on one
//! broker.
//!
//! By default nothing outside the process is needed: the broker is
//! `memory://`, an MQTT broker (rumqttd) runs in the process on a free port
//! of 127.0.0.1, and the rows go to an [`Embedded`] database under
//! `STROM_STATE_DIR` (default `./state/strom-demo`) instead of Postgres.
//! `STROM_BROKER`, `MQTT_URL` and `DATABASE_URL` each put the real thing in
//! its place. quake-source reads EMSC live (`EMSC_URL`), or, with
//! `QUAKE_REPLAY=<file>`, a recording played by the project's EMSC stand-in
//! in the process (`services/assets/quakes/recording.jsonl` is one; event
//! times moved to now, `QUAKE_REPLAY_SPEED` times as fast as recorded,
//! default 1). `DEMO_SYSTEMS` (`sensors,quakes`, the default) chooses what
//! runs. HTTP ports are the services' own (API 8007, map 8080, collection
//! 7002, ...); `STROM_WEB_PORT=0` picks free ones for all of them.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;

use futures::future::select_all;
use stream_core::connect::mqtt::MqttSource;
use stream_core::connect::websocket::WebSocketSource;
use stream_core::{App, BoxError, Error, TableStore, Worker};

use crate::api::{self, Source};
use crate::embedded::Embedded;
use crate::loader::{self, Database};
use crate::quake::emsc::{EmscStandIn, Recording, Replay};
use crate::quake::page::PageSettings;
use crate::service::{env_or, env_parse};
use crate::{aggregation, collection, processing, quake, simulator, topics};

/// The sensor pipeline's services, in the order they start (downstream
/// first) and stop (reversed).
const SENSOR_SERVICES: [(&str, u16); 6] = [
    ("api-gateway", 8007),
    ("db-loader", 7005),
    ("aggregation", 7004),
    ("processing", 7003),
    ("collection", 7002),
    ("sensor-simulator", 7001),
];

/// The earthquake pipeline's services, in the same order.
const QUAKE_SERVICES: [(&str, u16); 3] = [("quake-map", 8080), ("quake-loader", 7102), ("quake-source", 7101)];

/// The running systems.
pub struct Demo {
    workers: Vec<(&'static str, Worker)>,
    /// Where the sensors publish and collection subscribes (none without the sensor pipeline).
    pub mqtt_url: Option<String>,
    /// Where quake-source reads (none without the earthquake pipeline).
    pub emsc_url: Option<String>,
    /// The broker of the topics.
    pub broker: String,
    /// Where the rows are: a `DATABASE_URL`, or the embedded database's directory.
    pub database: String,
    /// The EMSC stand-in replaying a recording, while it plays.
    _replay: Option<EmscStandIn>,
}

impl Demo {
    /// Starts every service, from the environment (see the module's documentation).
    pub async fn start() -> Result<Demo, BoxError> {
        stream_core::init_logging();
        let broker = env_or("STROM_BROKER", "memory://");
        let systems = env_or("DEMO_SYSTEMS", "sensors,quakes");
        let mut services = Vec::new();
        for system in systems.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match system {
                "sensors" => services.extend(SENSOR_SERVICES),
                "quakes" => services.extend(QUAKE_SERVICES),
                other => return Err(format!("DEMO_SYSTEMS: unknown system {other:?} (sensors, quakes)").into()),
            }
        }
        let runs = |id: &str| services.iter().any(|(s, _)| *s == id);
        let mqtt_url = match std::env::var("MQTT_URL").ok().filter(|u| !u.trim().is_empty()) {
            _ if !runs("collection") => None,
            Some(url) => Some(url),
            None => Some(embedded_mqtt()?),
        };
        let (emsc_url, replay) = match std::env::var("QUAKE_REPLAY").ok().filter(|f| !f.trim().is_empty()) {
            _ if !runs("quake-source") => (None, None),
            Some(file) => {
                let recording = Recording::load(&file).map_err(|e| format!("QUAKE_REPLAY={file}: {e}"))?;
                let speed = env_parse::<f64>("QUAKE_REPLAY_SPEED", 1.0)?;
                let stand_in = EmscStandIn::start((Ipv4Addr::LOCALHOST, 0)).await?;
                drop(stand_in.replay(recording, Replay::at_speed(speed).rebased(true)));
                (Some(stand_in.url()), Some(stand_in))
            }
            None => (Some(quake::source::emsc_url()), None),
        };
        let apps = services.iter().map(|&(id, port)| build(id, port, &broker).map(|app| (id, app)));
        let apps = apps.collect::<stream_core::Result<Vec<_>>>()?;
        // Postgres at DATABASE_URL, else the embedded database: each loader
        // connects (and creates its own tables) on its own app.
        let database_url = std::env::var("DATABASE_URL").ok().filter(|u| !u.trim().is_empty());
        let needs_db = ["api-gateway", "db-loader", "quake-loader"].into_iter().any(runs);
        let (embedded, database) = match &database_url {
            _ if !needs_db => (None, "(none)".to_owned()),
            Some(url) => (None, url.clone()),
            None => {
                let dir = PathBuf::from(env_or("STROM_STATE_DIR", "./state/strom-demo")).join("database");
                let embedded = Embedded::open(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                (Some(embedded), dir.display().to_string())
            }
        };

        let mut workers = Vec::new();
        for (id, app) in apps {
            match id {
                "api-gateway" => app.routes(match &embedded {
                    Some(e) => api::router(&app, Source::Embedded(e))?,
                    None => api::router(&app, Source::Postgres(&database))?,
                }),
                "db-loader" => {
                    let db = match &embedded {
                        Some(e) => Database::Embedded(e.clone()),
                        None => loader::postgres(&app, &database).await?,
                    };
                    loader::load_all(&app, &db);
                }
                "aggregation" => {
                    aggregation::average(&app, &topics::processed(&app), &topics::averages(&app));
                }
                "processing" => {
                    processing::normalize(&app, &topics::raw(&app), &topics::processed(&app));
                }
                "collection" => {
                    let (client_id, url) = (env_or("MQTT_CLIENT_ID", "collection"), mqtt_url.as_deref().unwrap_or(""));
                    collection::collect(&app, MqttSource::new(&app, url, &client_id)?);
                }
                "sensor-simulator" => simulator::serve(
                    &app,
                    simulator::Config {
                        mqtt_url: mqtt_url.clone().unwrap_or_default(),
                        ..simulator::Config::from_env()?
                    },
                ),
                "quake-map" => {
                    quake::map::serve(&app, &quake::raw(&app), PageSettings::from_env());
                }
                "quake-loader" => {
                    let db = match &embedded {
                        Some(e) => Database::Embedded(e.clone()),
                        None => quake::loader::postgres(&app, &database).await?,
                    };
                    quake::loader::load(&app, &quake::raw(&app), &db);
                }
                _ => {
                    let url = emsc_url.as_deref().unwrap_or("");
                    quake::source::source(&app, WebSocketSource::new(&app, url, quake::source::SOURCE_NAME)?);
                }
            }
            workers.push((id, app.start().await?));
        }
        Ok(Demo { workers, mqtt_url, emsc_url, broker, database, _replay: replay })
    }

    /// The address of a service's HTTP endpoint.
    pub fn web_addr(&self, service: &str) -> Option<SocketAddr> {
        let addr = self.workers.iter().find(|(id, _)| *id == service)?.1.web_addr()?;
        Some(SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port())))
    }

    /// What a newcomer needs: where the map, the API, its docs and the metrics are.
    pub fn banner(&self) -> String {
        let url = |service: &str| self.web_addr(service).map_or_else(|| "(no HTTP)".into(), |a| format!("http://{a}"));
        let mut text = String::new();
        if let Some(mqtt) = &self.mqtt_url {
            text += &format!(
                "The sensor pipeline runs: simulated sensors -> MQTT -> collection -> processing -> aggregation -> db-loader -> api-gateway\n\
                 \n  API docs     {api}/docs\n  API          {api}/temperature_latest?sensor_num=1\n               {api}/average?sensor_num=1&timestamp_start=0&timestamp_end=9999999999\n  \
                 MQTT         {mqtt} (publish your own readings to sensors/<n>/temperature)\n\n",
                api = url("api-gateway"),
            );
        }
        if let Some(emsc) = &self.emsc_url {
            text += &format!(
                "The earthquake pipeline runs: EMSC websocket -> quake-source -> quakes.raw -> quake-loader, quake-map\n\
                 \n  map          {map}/\n  quakes       {map}/api/quakes?min_mag=3\n  live         {map}/api/quakes/stream\n  EMSC         {emsc}\n\n",
                map = url("quake-map"),
            );
        }
        let database = without_password(&self.database);
        text += &format!("  broker       {}\n  database     {database}\n\n  metrics\n", self.broker);
        for (id, _) in self.workers.iter().rev() {
            text += &format!("    {id:<17}{}/metrics\n", url(id));
        }
        text + "\nCtrl-C stops it."
    }
    /// Runs until SIGINT or SIGTERM, or until a service stops on its own; then
    /// stops them all, upstream first, so each drains what the one before sent.
    pub async fn run_until_signal(mut self) -> Result<(), Error> {
        let any_stopped = select_all(self.workers.iter_mut().map(|(_, w)| Box::pin(w.stopped())));
        tokio::select! {
            signal = stream_core::shutdown_signal() => signal?,
            _ = any_stopped => tracing::warn!("a service stopped on its own; stopping the others"),
        }
        self.stop().await
    }

    /// Stops every service, upstream first; the first error, if any.
    pub async fn stop(self) -> Result<(), Error> {
        let mut first_error = None;
        for (id, worker) in self.workers.into_iter().rev() {
            if let Err(e) = worker.stop().await {
                tracing::error!(service = id, error = %e, "stopped with an error");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// A database URL as it may be shown: a password in it replaced by `***`.
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let Some((userinfo, host)) = rest.rsplit_once('@') else { return url.to_owned() };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// The app of service `id`, as its own binary would build it, except that
/// its HTTP port is its own even when `STROM_WEB_PORT` is set (0 excepted:
/// then every service picks a free port), and its tables are in memory when
/// the broker is (their changelogs would not outlive the process). Its
/// endpoints listen on 127.0.0.1 unless `STROM_WEB_HOST` says otherwise: a
/// demo on a laptop is not a service on a network.
fn build(id: &str, port: u16, broker: &str) -> stream_core::Result<App> {
    let port = if env_parse::<u16>("STROM_WEB_PORT", port)? == 0 { 0 } else { port };
    let mut builder = App::builder(id).web_host(Ipv4Addr::LOCALHOST);
    if broker.starts_with("memory://") {
        builder = builder.table_store(TableStore::Memory);
    }
    builder.env()?.web_port(port).broker(broker).build()
}

/// Starts an MQTT broker in the process on a free port of 127.0.0.1 and
/// returns its URL.
fn embedded_mqtt() -> Result<String, BoxError> {
    use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
    // A free port: the broker binds it itself, a moment later.
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port();
    let connections = ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: 256 * 1024,
        max_inflight_count: 1000,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = ServerSettings {
        name: "demo".into(),
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    let router = RouterConfig {
        max_connections: 1000,
        max_outgoing_packet_count: 1000,
        max_segment_size: 16 * 1024 * 1024,
        max_segment_count: 10,
        ..RouterConfig::default()
    };
    let config = Config { router, v4: Some(HashMap::from([("demo".to_owned(), server)])), ..Config::default() };
    let mut broker = Broker::new(config);
    std::thread::Builder::new().name("mqtt-broker".into()).spawn(move || {
        if let Err(e) = broker.start() {
            tracing::error!(error = %e, "the embedded MQTT broker stopped");
        }
    })?;
    Ok(format!("mqtt://127.0.0.1:{port}"))
}

#[cfg(test)]
mod tests {
    use super::without_password;

    #[test]
    fn the_banner_shows_no_password() {
        assert_eq!(without_password("postgres://app:s3cr3t@db:5432/strom"), "postgres://app:***@db:5432/strom");
        assert_eq!(
            without_password("postgres://postgres@127.0.0.1:5432/strom"),
            "postgres://postgres@127.0.0.1:5432/strom"
        );
        assert_eq!(without_password("./state/strom-demo/database"), "./state/strom-demo/database");
    }
}
