//! A test driver: run an app (or a single agent) inside a `#[tokio::test]`,
//! on a private in-memory broker ([`TestDriver::app`]) or on a real Kafka
//! broker with topics of its own ([`TestDriver::app_on`]); push events, read
//! what it produced, inspect the dead letters and the committed offsets.
//!
//! ```
//! use std::time::Duration;
//! use stream_core::prelude::*;
//! use stream_core::testing::TestDriver;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let app = TestDriver::app("shout");
//! let input = app.topic::<(), String>("in");
//! let output = app.topic::<(), String>("out");
//! let out = output.clone();
//! app.agent("shout", &input, move |mut words| {
//!     let out = out.clone();
//!     async move {
//!         while let Some(word) = words.next().await {
//!             out.send(None, &word.value().to_uppercase()).await?;
//!         }
//!         Ok(())
//!     }
//! });
//!
//! let driver = TestDriver::start(&app).await?;
//! driver.send(&input, None, &"hello".to_string()).await?;
//! let shouted = driver.read(&output, 1, Duration::from_secs(5)).await?;
//! assert_eq!(shouted[0].value(), "HELLO");
//! driver.stop().await?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;

use crate::app::App;
use crate::dlq::{DeadLetter, dlq_topic};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::record::Payload;
use crate::topic::{Topic, produce};
use crate::tracking::lock;
use crate::transport::memory::MemoryBroker;
use crate::transport::{OutMessage, RawMessage, TopicPartition};
use crate::worker::Worker;

/// Drives an app on a private memory broker, or on a real one with topics of
/// its own.
#[derive(Debug)]
pub struct TestDriver {
    app: App,
    worker: Option<Worker>,
    cursors: Mutex<HashMap<(String, i32), i64>>,
}

fn unique() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{}-{n}-{nanos:x}", std::process::id())
}

impl TestDriver {
    /// An app on a new private `memory://` broker, committing every 50 ms.
    pub fn app(id: &str) -> App {
        Self::app_on(&format!("memory://test-{id}-{}", unique()), id)
    }

    /// An app on `broker` (`memory://...` or `kafka://...`), committing every
    /// 50 ms, serving no HTTP. On Kafka its topics and consumer group get a
    /// unique prefix, so tests can share a broker and run in parallel.
    pub fn app_on(broker: &str, id: &str) -> App {
        match Self::builder_on(broker, id).build() {
            Ok(app) => app,
            Err(e) => panic!("cannot build a test app {id:?}: {e}"),
        }
    }

    /// The builder of [`app_on`](Self::app_on), to change more before
    /// building (a state directory of the test's own, say). Its state
    /// directory defaults to a fresh one under the system's temporary directory.
    pub fn builder_on(broker: &str, id: &str) -> crate::AppBuilder {
        let unique = unique();
        let mut builder = App::builder(id)
            .broker(broker)
            .commit_interval(Duration::from_millis(50))
            .without_web()
            // A test that serves HTTP serves it on this machine only.
            .web_host([127, 0, 0, 1])
            .state_dir(std::env::temp_dir().join(format!("strom-test-{id}-{unique}")));
        if !broker.starts_with("memory://") {
            // Tests await sends one by one: hold neither sends nor fetches for batching.
            builder = builder
                .topic_prefix(format!("test-{unique}-"))
                .kafka("linger.ms", "0")
                .kafka("fetch.wait.max.ms", "20");
        }
        builder
    }

    /// Starts the app's worker and waits (up to 30 s) for its first assignment.
    ///
    /// Logs go to the test's captured output (shown when it fails), filtered
    /// by `RUST_LOG` (default `info`).
    pub async fn start(app: &App) -> Result<TestDriver> {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
        let worker = app.start().await?;
        let driver = TestDriver { app: app.clone(), worker: Some(worker), cursors: Mutex::default() };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !driver.worker.as_ref().is_some_and(Worker::is_ready) {
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Usage("the worker had no assignment within 30 s".into()));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(driver)
    }

    /// A driver without a worker: to feed and watch an app that runs
    /// elsewhere (another process on the same broker, same topic prefix).
    pub fn observe(app: &App) -> TestDriver {
        TestDriver { app: app.clone(), worker: None, cursors: Mutex::default() }
    }

    /// The app.
    pub fn app_ref(&self) -> &App {
        &self.app
    }

    /// The memory broker, when the app runs on `memory://`.
    pub fn broker(&self) -> Option<MemoryBroker> {
        self.app.memory_broker()
    }

    /// The running worker.
    pub fn worker(&self) -> Option<&Worker> {
        self.worker.as_ref()
    }

    /// The full name of a topic the app calls `name` (with the test prefix).
    pub fn topic_name(&self, name: &str) -> String {
        self.app.config().topic_name(name)
    }

    /// Sends a value to a topic and waits for the broker's acknowledgement.
    pub async fn send<K: Payload, V: Payload>(&self, topic: &Topic<K, V>, key: Option<&K>, value: &V) -> Result<()> {
        topic.send(key, value).await?.await
    }

    /// Sends raw bytes to a topic the app calls `topic` (for malformed input).
    pub async fn send_raw(&self, topic: &str, key: Option<&[u8]>, value: &[u8]) -> Result<()> {
        let msg = OutMessage {
            topic: self.topic_name(topic).into(),
            partition: None,
            key: key.map(Bytes::copy_from_slice),
            value: Some(Bytes::copy_from_slice(value)),
            headers: Vec::new(),
            timestamp_ms: None,
        };
        produce(&self.app.core, msg).await?.await
    }

    async fn partitions(&self, full_name: &str) -> Result<i32> {
        Ok(self.app.core.transport.partitions(full_name).await?.unwrap_or(0))
    }

    fn tp(full_name: &str, partition: i32) -> TopicPartition {
        TopicPartition { topic: full_name.into(), partition }
    }

    /// Every message of a topic the app calls `topic`, partition by partition.
    pub async fn messages(&self, topic: &str) -> Result<Vec<RawMessage>> {
        let name = self.topic_name(topic);
        let mut out = Vec::new();
        for p in 0..self.partitions(&name).await? {
            let mut from = 0;
            loop {
                let batch = self.app.core.transport.read(&Self::tp(&name, p), from, 10_000).await?;
                if batch.messages.is_empty() {
                    break;
                }
                from = batch.next;
                out.extend(batch.messages);
            }
        }
        Ok(out)
    }

    /// Reads the next `n` messages of `topic` (after those read by earlier
    /// calls), waiting up to `timeout`. Events of one partition are in order.
    pub async fn read<K: Payload, V: Payload>(
        &self,
        topic: &Topic<K, V>,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<Event<K, V>>> {
        let name = topic.name().to_owned();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            for p in 0..self.partitions(&name).await? {
                if out.len() >= n {
                    break;
                }
                let cursor = lock(&self.cursors).get(&(name.clone(), p)).copied().unwrap_or(0);
                let batch = self.app.core.transport.read(&Self::tp(&name, p), cursor, n - out.len()).await?;
                if let Some(last) = batch.messages.last() {
                    lock(&self.cursors).insert((name.clone(), p), last.offset + 1);
                }
                for raw in batch.messages {
                    let (key, value) = topic.decode(&raw)?;
                    out.push(Event::new(key, value).with_origin(&name, raw.partition, raw.offset));
                }
            }
            if out.len() >= n {
                return Ok(out);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Usage(format!(
                    "expected {n} new message(s) on {name} within {timeout:?}, got {}",
                    out.len()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the dead-letter topic of the topic the app calls `topic`
    /// holds `n` messages, and returns them all.
    pub async fn dead_letters(&self, topic: &str, n: usize, timeout: Duration) -> Result<Vec<DeadLetter>> {
        let dlq = dlq_topic(topic);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let messages = self.messages(&dlq).await?;
            if messages.len() >= n {
                return Ok(messages.iter().filter_map(DeadLetter::from_raw).collect());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Usage(format!("expected {n} dead letter(s) on {dlq}, got {}", messages.len())));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The committed position of the app's group on a partition of the topic
    /// the app calls `topic`.
    pub async fn committed(&self, topic: &str, partition: i32) -> Result<Option<i64>> {
        let tp = Self::tp(&self.topic_name(topic), partition);
        self.app.core.transport.committed(&self.app.config().group_id(), &tp).await
    }

    /// Whether the app's group has committed every partition of `topic` up to
    /// its end (partitions that never held a message count as caught up).
    pub async fn caught_up(&self, topic: &str) -> Result<bool> {
        let name = self.topic_name(topic);
        for p in 0..self.partitions(&name).await? {
            let committed = self.committed(topic, p).await?;
            let from = committed.unwrap_or(0);
            let rest = self.app.core.transport.read(&Self::tp(&name, p), from, 1).await?;
            if !rest.messages.is_empty() || (committed.is_none() && rest.next > 0) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Waits until `done` holds, checking every few milliseconds. An error
    /// from `done` counts as not yet.
    pub async fn wait_until(&self, timeout: Duration, done: impl AsyncFn(&Self) -> Result<bool>) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match done(self).await {
                Ok(true) => return Ok(()),
                Ok(false) | Err(_) if tokio::time::Instant::now() >= deadline => {
                    return Err(Error::Usage(format!("condition not met within {timeout:?}")));
                }
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    /// Drops the worker without stopping it, as a crash would: nothing more is
    /// committed or checkpointed, and it leaves the group abruptly.
    pub fn crash(&mut self) {
        drop(self.worker.take());
    }

    /// Stops the worker gracefully, returning what it returned.
    pub async fn stop(mut self) -> Result<()> {
        self.stop_worker().await
    }

    /// Stops the worker gracefully and keeps the driver, to inspect what the
    /// worker left behind (outputs, committed offsets).
    pub async fn stop_worker(&mut self) -> Result<()> {
        match self.worker.take() {
            Some(worker) => worker.stop().await,
            None => Ok(()),
        }
    }
}

/// A PostgreSQL database of a test's own (feature `postgres`), on the server
/// named by `STROM_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432`),
/// dropped with its connections when this goes out of scope, whether the test
/// passed or not.
///
/// ```no_run
/// # async fn doc() -> Result<(), stream_core::Error> {
/// use stream_core::testing::TestDatabase;
/// let db = TestDatabase::create("loader").await?; // or ::named(..) for one a service creates
/// let url = db.url();                              // postgres://.../strom_test_loader_...
/// # let _ = url; Ok(()) }
/// ```
#[cfg(feature = "postgres")]
#[derive(Debug)]
pub struct TestDatabase {
    server: String,
    name: String,
}

#[cfg(feature = "postgres")]
impl TestDatabase {
    /// A name for a database that does not exist yet (for code that creates it).
    pub fn named(tag: &str) -> TestDatabase {
        let server =
            std::env::var("STROM_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
        let tag: String = tag.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        TestDatabase { server, name: format!("strom_test_{tag}_{}", unique().replace('-', "_")) }
    }

    /// A new, empty database.
    pub async fn create(tag: &str) -> Result<TestDatabase> {
        let db = Self::named(tag);
        let admin = db.connect_to(&format!("{}/postgres", db.server)).await?;
        admin.batch_execute(&format!("CREATE DATABASE {}", db.name)).await.map_err(|e| Error::Io {
            context: format!("creating the test database {}", db.name),
            source: std::io::Error::other(e.to_string()),
        })?;
        Ok(db)
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("{}/{}", self.server, self.name)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The server's URL (without a database).
    pub fn server(&self) -> &str {
        &self.server
    }

    /// A connection to it.
    pub async fn connect(&self) -> Result<tokio_postgres::Client> {
        self.connect_to(&self.url()).await
    }

    async fn connect_to(&self, url: &str) -> Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.map_err(|e| Error::Io {
            context: format!("connecting to PostgreSQL for test database {}", self.name),
            source: std::io::Error::other(e.to_string()),
        })?;
        tokio::spawn(conn);
        Ok(client)
    }
}

#[cfg(feature = "postgres")]
impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (format!("{}/postgres", self.server), self.name.clone());
        // Drop may run inside the test's runtime: a thread and a runtime of its own.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async {
                let (client, conn) = tokio::time::timeout(
                    Duration::from_secs(5),
                    tokio_postgres::connect(&admin_url, tokio_postgres::NoTls),
                )
                .await
                .ok()?
                .ok()?;
                tokio::spawn(conn);
                let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                tokio::time::timeout(Duration::from_secs(10), client.batch_execute(&sql)).await.ok()?.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            tracing::warn!(database = %self.name, "could not drop the test database");
        }
    }
}
