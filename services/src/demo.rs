//! The whole sensor pipeline in one process: the simulator, every service
//! and the API, each its own [`App`] (its own consumer group, metrics and
//! HTTP port, as when they run apart), on one broker.
//!
//! By default nothing outside the process is needed: the broker is
//! `memory://`, an MQTT broker (rumqttd) runs in the process on a free port
//! of 127.0.0.1, and the rows go to an [`Embedded`] database under
//! `STROM_STATE_DIR` (default `./state/sensor-demo`) instead of Postgres.
//! `STROM_BROKER`, `MQTT_URL` and `DATABASE_URL` each put the real thing in
//! its place. HTTP ports are the services' own (API 8007, collection
//! 7002, ...); `STROM_WEB_PORT=0` picks free ones for all of them.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;

use futures::future::select_all;
use stream_core::connect::mqtt::MqttSource;
use stream_core::{App, BoxError, Error, TableStore, Worker};

use crate::api::{self, Source};
use crate::embedded::Embedded;
use crate::loader::{self, Database};
use crate::service::{env_or, env_parse};
use crate::{aggregation, collection, processing, simulator, topics};

/// The services, in the order they start (downstream first) and stop (reversed).
const SERVICES: [(&str, u16); 6] = [
    ("api-gateway", 8007),
    ("db-loader", 7005),
    ("aggregation", 7004),
    ("processing", 7003),
    ("collection", 7002),
    ("sensor-simulator", 7001),
];

/// The running pipeline.
pub struct Demo {
    workers: Vec<(&'static str, Worker)>,
    /// Where the sensors publish and collection subscribes.
    pub mqtt_url: String,
    /// The broker of the topics.
    pub broker: String,
    /// Where the rows are: a `DATABASE_URL`, or the embedded database's directory.
    pub database: String,
}

impl Demo {
    /// Starts every service, from the environment (see the module's documentation).
    pub async fn start() -> Result<Demo, BoxError> {
        stream_core::init_logging();
        let broker = env_or("STROM_BROKER", "memory://");
        let mqtt_url = match std::env::var("MQTT_URL").ok().filter(|u| !u.trim().is_empty()) {
            Some(url) => url,
            None => embedded_mqtt()?,
        };
        let apps = SERVICES.map(|(id, port)| build(id, port, &broker).map(|app| (id, app)));
        let apps = apps.into_iter().collect::<stream_core::Result<Vec<_>>>()?;
        let app = |service: &str| apps.iter().find(|(id, _)| *id == service).map(|(_, app)| app);
        let (db, database) = match std::env::var("DATABASE_URL").ok().filter(|u| !u.trim().is_empty()) {
            Some(url) => (loader::postgres(app("db-loader").ok_or("no db-loader")?, &url).await?, url),
            None => {
                let dir = PathBuf::from(env_or("STROM_STATE_DIR", "./state/sensor-demo")).join("database");
                let embedded = Embedded::open(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                (Database::Embedded(embedded), dir.display().to_string())
            }
        };

        let mut workers = Vec::new();
        for (id, app) in apps {
            match id {
                "api-gateway" => app.routes(match &db {
                    Database::Embedded(e) => api::router(&app, Source::Embedded(e))?,
                    Database::Postgres(_) => api::router(&app, Source::Postgres(&database))?,
                }),
                "db-loader" => loader::load_all(&app, &db),
                "aggregation" => {
                    aggregation::average(&app, &topics::processed(&app), &topics::averages(&app));
                }
                "processing" => {
                    processing::normalize(&app, &topics::raw(&app), &topics::processed(&app));
                }
                "collection" => {
                    let client_id = env_or("MQTT_CLIENT_ID", "collection");
                    collection::collect(&app, MqttSource::new(&app, &mqtt_url, &client_id)?);
                }
                _ => simulator::serve(
                    &app,
                    simulator::Config { mqtt_url: mqtt_url.clone(), ..simulator::Config::from_env()? },
                ),
            }
            workers.push((id, app.start().await?));
        }
        Ok(Demo { workers, mqtt_url, broker, database })
    }

    /// The address of a service's HTTP endpoint.
    pub fn web_addr(&self, service: &str) -> Option<SocketAddr> {
        let addr = self.workers.iter().find(|(id, _)| *id == service)?.1.web_addr()?;
        Some(SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port())))
    }

    /// What a newcomer needs: where the API, its docs and the metrics are.
    pub fn banner(&self) -> String {
        let url = |service: &str| self.web_addr(service).map_or_else(|| "(no HTTP)".into(), |a| format!("http://{a}"));
        let mut text = format!(
            "The sensor pipeline runs: simulated sensors -> MQTT -> collection -> processing -> aggregation -> db-loader -> api-gateway\n\
             \n  API docs     {api}/docs\n  API          {api}/temperature_latest?sensor_num=1\n               {api}/average?sensor_num=1&timestamp_start=0&timestamp_end=9999999999\n\
             \n  broker       {}\n  MQTT         {} (publish your own readings to sensors/<n>/temperature)\n  database     {}\n\n  metrics\n",
            self.broker,
            self.mqtt_url,
            self.database,
            api = url("api-gateway"),
        );
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
