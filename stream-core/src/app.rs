//! The application: configuration, declared topics and agents, and the worker
//! that runs them.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::agent::{Agent, AgentDef};
use crate::error::{BoxError, Error, Result};
use crate::metrics::Metrics;
use crate::record::Payload;
use crate::stream::EventStream;
use crate::table::window::{CountWindows, SlidingWindows, WindowedTable, Windows};
use crate::table::{GlobalTable, Table, TableCore};
use crate::timer::{Schedule, Shutdown, TaskDef, TimerDef};
use crate::topic::{Topic, TopicInfo};
use crate::tracking::{SendTracker, lock};
use crate::transport::{self, Producer, Transport};
use crate::worker::Worker;

/// The configuration of an [`App`].
#[derive(Debug, Clone, PartialEq)]
pub struct AppConfig {
    /// The app id: the consumer group, and the prefix of internal topics.
    pub id: String,
    /// `memory://[name]` or `kafka://host:port[,host:port]`.
    pub broker: String,
    /// Where table stores live.
    pub state_dir: PathBuf,
    /// The HTTP port of `/metrics`, `/health` and `/ready` (`0` picks a free
    /// one, `None` serves nothing).
    pub web_port: Option<u16>,
    /// The address the HTTP endpoints listen on: all interfaces by default
    /// (as a container needs), `127.0.0.1` to keep them on this machine.
    pub web_host: std::net::IpAddr,
    /// A prefix for every topic name and for the consumer group, so that
    /// several deployments (or test runs) can share one cluster.
    pub topic_prefix: String,
    /// How often processed offsets are committed.
    pub commit_interval: Duration,
    /// How long shutdown waits for in-flight events.
    pub shutdown_timeout: Duration,
    /// Partitions of topics declared without a count.
    pub default_partitions: i32,
    /// Replication factor of created topics.
    pub replication: i16,
    /// librdkafka properties from `STROM_KAFKA_*`, lower-cased and dotted.
    pub kafka: BTreeMap<String, String>,
    /// Where tables keep their partitions on the worker.
    pub table_store: TableStore,
    /// How often global tables read their changelogs' new records when
    /// there were none (`STROM_GLOBAL_TABLE_FOLLOW_MS`): a change shows on
    /// every worker within about this long, and each round is one read of
    /// each partition (a fetch on Kafka).
    pub global_table_follow: Duration,
}

/// Where tables keep their partitions on the worker (`STROM_TABLE_STORE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TableStore {
    /// sled, under `<state dir>/tables`: a restart replays only the changelog
    /// written since the last checkpoint (`sled`, the default).
    #[default]
    Sled,
    /// In memory: every start rebuilds the tables from their changelogs (`memory`).
    Memory,
}

impl AppConfig {
    /// Defaults for an app id: Kafka on 127.0.0.1:9092, state in `./state/<id>`,
    /// web port 6066, commits every second.
    pub fn new(id: impl Into<String>) -> Self {
        let id = id.into();
        AppConfig {
            state_dir: PathBuf::from("state").join(&id),
            id,
            broker: "kafka://127.0.0.1:9092".into(),
            web_port: Some(6066),
            web_host: std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            topic_prefix: String::new(),
            commit_interval: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(30),
            default_partitions: 1,
            replication: 1,
            kafka: BTreeMap::new(),
            table_store: TableStore::Sled,
            global_table_follow: Duration::from_millis(20),
        }
    }

    /// Applies the environment: `STROM_BROKER`, `STROM_STATE_DIR`,
    /// `STROM_WEB_PORT` (a number, or `off`), `STROM_WEB_HOST` (an IP
    /// address), `STROM_TOPIC_PREFIX`,
    /// `STROM_COMMIT_INTERVAL_MS`, `STROM_SHUTDOWN_TIMEOUT_MS`,
    /// `STROM_REPLICATION`, `STROM_TABLE_STORE` (`sled` or `memory`),
    /// `STROM_GLOBAL_TABLE_FOLLOW_MS` and every
    /// `STROM_KAFKA_<PROPERTY>`.
    pub fn apply_env(mut self) -> Result<Self> {
        self.apply_vars(std::env::vars())?;
        Ok(self)
    }

    fn apply_vars(&mut self, vars: impl Iterator<Item = (String, String)>) -> Result<()> {
        fn parse<T: std::str::FromStr>(name: &str, value: &str) -> Result<T> {
            value.trim().parse().map_err(|_| Error::Config(format!("{name}={value:?} is not a valid number")))
        }
        for (name, value) in vars {
            match name.as_str() {
                "STROM_BROKER" => self.broker = value,
                "STROM_STATE_DIR" => self.state_dir = PathBuf::from(value),
                "STROM_WEB_PORT" if value.trim() == "off" => self.web_port = None,
                "STROM_WEB_PORT" => self.web_port = Some(parse(&name, &value)?),
                "STROM_WEB_HOST" => {
                    self.web_host = value.trim().parse().map_err(|_| {
                        Error::Config(format!("{name}={value:?} is not an IP address (0.0.0.0, 127.0.0.1, ::)"))
                    })?;
                }
                "STROM_TOPIC_PREFIX" => self.topic_prefix = value,
                "STROM_COMMIT_INTERVAL_MS" => self.commit_interval = Duration::from_millis(parse(&name, &value)?),
                "STROM_SHUTDOWN_TIMEOUT_MS" => self.shutdown_timeout = Duration::from_millis(parse(&name, &value)?),
                "STROM_REPLICATION" => self.replication = parse(&name, &value)?,
                "STROM_GLOBAL_TABLE_FOLLOW_MS" => {
                    self.global_table_follow = Duration::from_millis(parse(&name, &value)?);
                }
                "STROM_TABLE_STORE" => {
                    self.table_store = match value.trim() {
                        "sled" => TableStore::Sled,
                        "memory" => TableStore::Memory,
                        _ => return Err(Error::Config(format!("{name}={value:?}: expected sled or memory"))),
                    }
                }
                _ => {
                    if let Some(prop) = name.strip_prefix("STROM_KAFKA_") {
                        self.kafka.insert(prop.to_ascii_lowercase().replace('_', "."), value);
                    }
                }
            }
        }
        Ok(())
    }

    /// The consumer group: the app id, after the topic prefix.
    pub fn group_id(&self) -> String {
        format!("{}{}", self.topic_prefix, self.id)
    }

    /// The full name of a topic the app calls `name`.
    pub fn topic_name(&self, name: &str) -> String {
        format!("{}{name}", self.topic_prefix)
    }
}

/// A topic a table can be co-partitioned with (any [`Topic`]).
pub trait CoPartitioned {
    /// The topic's full name.
    fn topic_name(&self) -> &Arc<str>;
}

impl<K, V> CoPartitioned for Topic<K, V> {
    fn topic_name(&self) -> &Arc<str> {
        self.name_arc()
    }
}

/// Builds an [`App`]: code defaults first, then (with [`env`](Self::env)) the
/// environment over them.
///
/// ```
/// let app = stream_core::App::builder("hello")
///     .broker("memory://")      // the default when STROM_BROKER is not set
///     .env()?                   // STROM_* variables override
///     .build()?;
/// assert_eq!(app.id(), "hello");
/// # Ok::<(), stream_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct AppBuilder {
    config: AppConfig,
}

impl AppBuilder {
    /// Sets the broker URL.
    pub fn broker(mut self, url: impl Into<String>) -> Self {
        self.config.broker = url.into();
        self
    }

    /// Sets the state directory.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.state_dir = dir.into();
        self
    }

    /// Sets the HTTP port (`0` picks a free one).
    pub fn web_port(mut self, port: u16) -> Self {
        self.config.web_port = Some(port);
        self
    }

    /// Sets the address the HTTP endpoints listen on (default: all interfaces).
    pub fn web_host(mut self, host: impl Into<std::net::IpAddr>) -> Self {
        self.config.web_host = host.into();
        self
    }

    /// Sets a librdkafka property (as `STROM_KAFKA_<PROPERTY>` does).
    pub fn kafka(mut self, property: &str, value: impl Into<String>) -> Self {
        self.config.kafka.insert(property.to_owned(), value.into());
        self
    }

    /// Serves no HTTP endpoint.
    pub fn without_web(mut self) -> Self {
        self.config.web_port = None;
        self
    }

    /// Prefixes every topic name and the consumer group (see
    /// [`AppConfig::topic_prefix`]).
    pub fn topic_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.config.topic_prefix = prefix.into();
        self
    }

    /// Sets how often global tables look for new records when they found
    /// none (default 20 ms; see [`AppConfig::global_table_follow`]).
    pub fn global_table_follow(mut self, every: Duration) -> Self {
        self.config.global_table_follow = every;
        self
    }

    /// Sets the commit interval.
    pub fn commit_interval(mut self, every: Duration) -> Self {
        self.config.commit_interval = every;
        self
    }

    /// Sets how long shutdown waits for in-flight events.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.config.shutdown_timeout = timeout;
        self
    }

    /// Sets where tables keep their partitions.
    pub fn table_store(mut self, store: TableStore) -> Self {
        self.config.table_store = store;
        self
    }

    /// Sets the partition count of topics declared without one.
    pub fn default_partitions(mut self, partitions: i32) -> Self {
        self.config.default_partitions = partitions;
        self
    }

    /// Applies the environment (see [`AppConfig::apply_env`]).
    pub fn env(mut self) -> Result<Self> {
        self.config = self.config.apply_env()?;
        Ok(self)
    }

    /// The configuration so far.
    pub fn config(&self) -> &AppConfig {
        &self.config
    }

    /// Connects the transport and makes the app.
    pub fn build(self) -> Result<App> {
        App::with_config(self.config)
    }
}

/// What every part of a running app shares: the transport, the producer and
/// the acknowledgement tracker, and the registry of declared topics.
pub(crate) struct AppCore {
    pub(crate) config: AppConfig,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) producer: Arc<dyn Producer>,
    pub(crate) sends: Arc<SendTracker>,
    pub(crate) topics: Mutex<BTreeMap<String, TopicInfo>>,
    pub(crate) tables: Mutex<Vec<Arc<TableCore>>>,
    pub(crate) metrics: Metrics,
}

/// A Strom application: topics, agents, timers, and the worker that runs them.
///
/// ```no_run
/// use stream_core::prelude::*;
///
/// #[tokio::main]
/// async fn main() -> Result<(), stream_core::Error> {
///     let app = App::builder("greeter").broker("memory://").env()?.build()?;
///     let names = app.topic::<(), String>("names");
///     app.agent("greet", &names, |mut names| async move {
///         while let Some(name) = names.next().await {
///             println!("Hello, {}!", name.value());
///         }
///         Ok(())
///     });
///     app.main().await
/// }
/// ```
#[derive(Clone)]
pub struct App {
    pub(crate) core: Arc<AppCore>,
    pub(crate) agents: Arc<Mutex<Vec<Arc<Mutex<AgentDef>>>>>,
    pub(crate) timers: Arc<Mutex<Vec<TimerDef>>>,
    pub(crate) tasks: Arc<Mutex<Vec<TaskDef>>>,
    /// Routes served by the worker's HTTP endpoint beside its own.
    #[cfg(feature = "web")]
    pub(crate) routes: Arc<Mutex<Vec<axum::Router>>>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("id", &self.core.config.id).field("broker", &self.core.config.broker).finish()
    }
}

impl App {
    /// A builder with defaults for `id`.
    pub fn builder(id: impl Into<String>) -> AppBuilder {
        AppBuilder { config: AppConfig::new(id) }
    }

    /// An app configured from the environment (see [`AppConfig::apply_env`]).
    pub fn from_env(id: impl Into<String>) -> Result<App> {
        Self::builder(id).env()?.build()
    }

    /// An app with this configuration.
    pub fn with_config(config: AppConfig) -> Result<App> {
        if config.id.is_empty() || config.id.chars().any(|c| !(c.is_ascii_alphanumeric() || "._-".contains(c))) {
            return Err(Error::Config(format!(
                "app id {:?}: use letters, digits, '.', '_' and '-' (it names the consumer group and internal topics)",
                config.id
            )));
        }
        let sends = SendTracker::new();
        let transport = transport::connect(&config.broker, &config, sends.clone())?;
        let producer = transport.producer();
        let metrics = Metrics::new(sends.clone());
        Ok(App {
            core: Arc::new(AppCore {
                config,
                transport,
                producer,
                sends,
                topics: Mutex::default(),
                tables: Mutex::default(),
                metrics,
            }),
            agents: Arc::default(),
            timers: Arc::default(),
            tasks: Arc::default(),
            #[cfg(feature = "web")]
            routes: Arc::default(),
        })
    }

    /// The app id.
    pub fn id(&self) -> &str {
        &self.core.config.id
    }

    /// The configuration.
    pub fn config(&self) -> &AppConfig {
        &self.core.config
    }

    /// The app's metrics, where services register their own.
    pub fn metrics(&self) -> &Metrics {
        &self.core.metrics
    }

    /// Declares a topic with key type `K` and value type `V`, using their
    /// default codecs. Declared topics are created when the worker starts.
    /// The name gets the app's [topic prefix](AppConfig::topic_prefix).
    pub fn topic<K: Payload, V: Payload>(&self, name: &str) -> Topic<K, V> {
        Topic::declare(self.core.clone(), &self.core.config.topic_name(name))
    }

    /// Declares a table, co-partitioned with `topic`: the topic whose events
    /// update it, and whose partitions decide where the table's partitions
    /// live. Its changelog topic `<app id>-<name>-changelog` is created when
    /// the worker starts. See [`Table`](crate::Table).
    pub fn table<K: Payload, V: Payload>(&self, name: &str, topic: &impl CoPartitioned) -> Table<K, V> {
        Table::declare(&self.core, name, Some(topic.topic_name().clone()))
    }

    /// Declares a table every worker holds whole, kept current from its
    /// changelog. See [`GlobalTable`](crate::table::GlobalTable).
    pub fn global_table<K: Payload, V: Payload>(&self, name: &str) -> GlobalTable<K, V> {
        GlobalTable::declare(&self.core, name)
    }

    /// Declares a table every worker holds whole, read from `topic` itself
    /// (Kafka Streams' `globalTable(topic)`): each key at its last version
    /// read, or at the version [`GlobalTable::keep_if`] keeps. No changelog
    /// of its own and no consumer group: every worker reads every partition
    /// of `topic`, which suits replicas that each serve all the data.
    pub fn global_table_from<K: Payload, V: Payload>(&self, name: &str, topic: &Topic<K, V>) -> GlobalTable<K, V> {
        GlobalTable::declare_over(&self.core, name, topic.name_arc().clone())
    }

    /// Declares a table of tumbling or hopping windows, co-partitioned with
    /// `topic`. See [`WindowedTable`](crate::table::window::WindowedTable).
    pub fn windowed_table<K: Payload, V: Payload>(
        &self,
        name: &str,
        topic: &impl CoPartitioned,
        windows: Windows,
    ) -> WindowedTable<K, V> {
        WindowedTable::new(self.table(name, topic), windows)
    }

    /// Declares a table of the last `n` values of each key, co-partitioned
    /// with `topic`. See [`CountWindows`](crate::table::window::CountWindows).
    pub fn count_windows<K, T>(&self, name: &str, topic: &impl CoPartitioned, n: usize) -> CountWindows<K, T>
    where
        K: Payload,
        T: serde::Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
    {
        CountWindows::new(self.table(name, topic), n)
    }

    /// Declares a table of the values of each key within `size` of event
    /// time, co-partitioned with `topic`. See
    /// [`SlidingWindows`](crate::table::window::SlidingWindows).
    pub fn sliding_windows<K, T>(&self, name: &str, topic: &impl CoPartitioned, size: Duration) -> SlidingWindows<K, T>
    where
        K: Payload,
        T: serde::Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
    {
        SlidingWindows::new(self.table(name, topic), size)
    }

    /// Declares an agent: `handler` is called with the stream of events of
    /// `topic` and processes them, in order per partition.
    ///
    /// The handler returns when its stream ends (at shutdown). An error it
    /// returns is handled by the agent's [`ErrorPolicy`](crate::ErrorPolicy):
    /// the events it was handling are retried, then dead-lettered or the agent
    /// stops.
    pub fn agent<K, V, F, Fut>(&self, name: &str, topic: &Topic<K, V>, handler: F) -> Agent
    where
        K: Payload,
        V: Payload,
        F: Fn(EventStream<K, V>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        let def = Arc::new(Mutex::new(AgentDef::new(name, topic, handler)));
        lock(&self.agents).push(def.clone());
        Agent { def }
    }

    /// Runs `f` every `every` while the worker runs (the first run after one period).
    pub fn timer<F, Fut>(&self, name: &str, every: Duration, f: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        lock(&self.timers).push(TimerDef::new(name, Schedule::Every(every), f));
    }

    /// Runs `f` on a cron schedule (UTC), e.g. `"*/5 * * * *"` (every five
    /// minutes) or with seconds, `"*/10 * * * * *"`.
    pub fn crontab<F, Fut>(&self, name: &str, expr: &str, f: F) -> Result<()>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        let schedule = Schedule::cron(expr)?;
        lock(&self.timers).push(TimerDef::new(name, schedule, f));
        Ok(())
    }

    /// Runs `f` for as long as the worker runs: a source reading from outside
    /// (MQTT, a websocket) and sending to topics, say. `f` gets a [`Shutdown`]
    /// that resolves when the worker stops; the worker waits (up to its
    /// shutdown timeout) for `f` to return before it flushes and commits. A run
    /// that fails is started again after a backoff.
    ///
    /// ```
    /// # let app = stream_core::App::builder("doc").broker("memory://").build()?;
    /// let ticks = app.topic::<(), u64>("ticks");
    /// app.task("ticker", move |mut shutdown| {
    ///     let ticks = ticks.clone();
    ///     async move {
    ///         let mut n = 0;
    ///         loop {
    ///             tokio::select! {
    ///                 () = shutdown.wait() => return Ok(()),
    ///                 () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
    ///             }
    ///             n += 1;
    ///             ticks.send(None, &n).await?;
    ///         }
    ///     }
    /// });
    /// # Ok::<(), stream_core::Error>(())
    /// ```
    pub fn task<F, Fut>(&self, name: &str, f: F)
    where
        F: Fn(Shutdown) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        lock(&self.tasks).push(TaskDef::new(name, f));
    }

    /// Serves `router`'s routes on the worker's HTTP endpoint, beside
    /// `/metrics`, `/health` and `/ready` (feature `web`): a service's own API
    /// on the one port it exposes.
    ///
    /// ```
    /// use axum::routing::get;
    /// let app = stream_core::App::builder("api").broker("memory://").build()?;
    /// app.routes(axum::Router::new().route("/hello", get(|| async { "hello" })));
    /// # Ok::<(), stream_core::Error>(())
    /// ```
    #[cfg(feature = "web")]
    pub fn routes(&self, router: axum::Router) {
        lock(&self.routes).push(router);
    }

    /// The declared agents: name, source topic, concurrency.
    pub fn agents(&self) -> Vec<(String, String, usize)> {
        lock(&self.agents)
            .iter()
            .map(|d| {
                let d = lock(d);
                (d.name.clone(), d.topic.to_string(), d.concurrency)
            })
            .collect()
    }

    /// The declared topics, with their dead-letter topics.
    pub fn topics(&self) -> Vec<crate::transport::TopicSpec> {
        self.topic_specs()
    }

    pub(crate) fn topic_specs(&self) -> Vec<crate::transport::TopicSpec> {
        let mut specs: BTreeMap<String, crate::transport::TopicSpec> =
            lock(&self.core.topics).values().map(|t| (t.spec.name.clone(), t.spec.clone())).collect();
        let sources: Vec<String> = lock(&self.agents).iter().map(|d| lock(d).topic.to_string()).collect();
        let stage_topics: Vec<String> =
            lock(&self.core.topics).values().filter(|t| t.consumed).map(|t| t.spec.name.clone()).collect();
        for source in sources.into_iter().chain(stage_topics) {
            if let Some(spec) = specs.get(&source).cloned() {
                let dlq = crate::dlq::dlq_topic(&source);
                specs.entry(dlq.clone()).or_insert(crate::transport::TopicSpec { name: dlq, ..spec });
            }
        }
        for table in lock(&self.core.tables).iter().filter(|t| !t.external) {
            let spec = table.changelog_spec();
            specs.insert(spec.name.clone(), spec);
        }
        specs.into_values().collect()
    }

    /// Starts the worker: creates topics, joins the consumer group and runs
    /// the agents and timers until [`Worker::stop`].
    pub async fn start(&self) -> Result<Worker> {
        Worker::start(self.clone()).await
    }

    /// Runs the worker until SIGINT or SIGTERM, then shuts down gracefully.
    pub async fn run(&self) -> Result<()> {
        let worker = self.start().await?;
        worker.run_until_signal().await
    }

    /// The command line: `worker` (default), `send`, `agents`, `topics`.
    pub async fn main(&self) -> Result<()> {
        crate::cli::main(self, std::env::args_os()).await
    }

    /// Waits until every message sent so far was acknowledged by the broker
    /// (or `timeout` passed).
    pub async fn flush(&self, timeout: Duration) -> Result<()> {
        self.core.producer.flush(timeout).await
    }

    /// The memory broker, when the app runs on `memory://`.
    pub fn memory_broker(&self) -> Option<crate::transport::memory::MemoryBroker> {
        self.core.transport.memory_broker()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_overrides_defaults() {
        let mut c = AppConfig::new("svc");
        c.apply_vars(
            [
                ("STROM_BROKER", "memory://x"),
                ("STROM_WEB_PORT", "0"),
                ("STROM_WEB_HOST", "127.0.0.1"),
                ("STROM_COMMIT_INTERVAL_MS", "250"),
                ("STROM_KAFKA_SESSION_TIMEOUT_MS", "6000"),
                ("STROM_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
                ("STROM_TABLE_STORE", "memory"),
                ("UNRELATED", "1"),
            ]
            .into_iter()
            .map(|(a, b)| (a.to_owned(), b.to_owned())),
        )
        .unwrap();
        assert_eq!(c.broker, "memory://x");
        assert_eq!(c.web_port, Some(0));
        assert_eq!(c.web_host, std::net::IpAddr::from([127, 0, 0, 1]));
        assert_eq!(c.commit_interval, Duration::from_millis(250));
        assert_eq!(c.kafka.get("session.timeout.ms").map(String::as_str), Some("6000"));
        assert_eq!(c.kafka.get("security.protocol").map(String::as_str), Some("SASL_SSL"));
        assert_eq!(c.state_dir, PathBuf::from("state/svc"));
        assert_eq!(c.table_store, TableStore::Memory);
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let mut c = AppConfig::new("svc");
        let e = c.apply_vars(std::iter::once(("STROM_WEB_PORT".to_owned(), "http".to_owned()))).unwrap_err();
        assert_eq!(e.to_string(), "configuration: STROM_WEB_PORT=\"http\" is not a valid number");
        let e = c.apply_vars(std::iter::once(("STROM_WEB_HOST".to_owned(), "localhost".to_owned()))).unwrap_err();
        assert!(e.to_string().contains("STROM_WEB_HOST=\"localhost\" is not an IP address"), "{e}");
        let e = App::builder("bad id!").broker("memory://").build().unwrap_err();
        assert!(e.to_string().contains("app id"), "{e}");
        let e = App::builder("x").broker("nats://1").build().unwrap_err();
        assert!(e.to_string().contains("expected memory:// or kafka://"), "{e}");
    }
}
