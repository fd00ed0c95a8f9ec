//! A test driver: run an app (or a single agent) on a private in-memory broker
//! inside a `#[tokio::test]`, push events, read what it produced, inspect the
//! dead letters.
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

/// Drives an app on its private memory broker.
#[derive(Debug)]
pub struct TestDriver {
    app: App,
    broker: MemoryBroker,
    worker: Option<Worker>,
    cursors: Mutex<HashMap<(String, i32), i64>>,
}

impl TestDriver {
    /// An app on a new private `memory://` broker, committing every 50 ms.
    pub fn app(id: &str) -> App {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let broker = format!("memory://test-{id}-{}-{n}", std::process::id());
        match App::builder(id).broker(broker).commit_interval(Duration::from_millis(50)).build() {
            Ok(app) => app,
            Err(e) => panic!("cannot build a test app {id:?}: {e}"),
        }
    }

    /// Starts the app's worker. The app must use `memory://`.
    pub async fn start(app: &App) -> Result<TestDriver> {
        let broker =
            app.memory_broker().ok_or_else(|| Error::Usage("the test driver runs apps on memory:// only".into()))?;
        let worker = app.start().await?;
        let driver = TestDriver { app: app.clone(), broker, worker: Some(worker), cursors: Mutex::default() };
        driver.wait_until(Duration::from_secs(5), |d| d.worker.as_ref().is_some_and(Worker::is_ready)).await?;
        Ok(driver)
    }

    /// The app.
    pub fn app_ref(&self) -> &App {
        &self.app
    }

    /// The broker.
    pub fn broker(&self) -> &MemoryBroker {
        &self.broker
    }

    /// The running worker.
    pub fn worker(&self) -> Option<&Worker> {
        self.worker.as_ref()
    }

    /// Sends a value to a topic.
    pub async fn send<K: Payload, V: Payload>(&self, topic: &Topic<K, V>, key: Option<&K>, value: &V) -> Result<()> {
        topic.send(key, value).await?.await
    }

    /// Sends raw bytes to a topic (for malformed input).
    pub async fn send_raw(&self, topic: &str, key: Option<&[u8]>, value: &[u8]) -> Result<()> {
        let msg = OutMessage {
            topic: topic.into(),
            partition: None,
            key: key.map(Bytes::copy_from_slice),
            value: Some(Bytes::copy_from_slice(value)),
            headers: Vec::new(),
            timestamp_ms: None,
        };
        produce(&self.app.core, msg).await?.await
    }

    /// Every message of a topic so far, partition by partition.
    pub fn messages(&self, topic: &str) -> Vec<RawMessage> {
        let partitions = self.partitions(topic);
        (0..partitions).flat_map(|p| self.broker.read(topic, p, 0, usize::MAX)).collect()
    }

    fn partitions(&self, topic: &str) -> i32 {
        (0..).take_while(|p| self.broker.end_offset(topic, *p).is_some()).count() as i32
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
        self.wait_until(timeout, |d| d.unread(&name) >= n).await.map_err(|_| {
            Error::Usage(format!(
                "expected {n} new message(s) on {name} within {timeout:?}, got {}",
                self.unread(&name)
            ))
        })?;
        let mut out = Vec::new();
        let mut cursors = lock(&self.cursors);
        for p in 0..self.partitions(&name) {
            if out.len() >= n {
                break;
            }
            let cursor = cursors.entry((name.clone(), p)).or_insert(0);
            for raw in self.broker.read(&name, p, *cursor, n - out.len()) {
                *cursor = raw.offset + 1;
                let (key, value) = topic.decode(&raw)?;
                out.push(Event::new(key, value).with_origin(&name, raw.partition, raw.offset));
            }
        }
        Ok(out)
    }

    fn unread(&self, topic: &str) -> usize {
        let cursors = lock(&self.cursors);
        (0..self.partitions(topic))
            .map(|p| {
                let end = self.broker.end_offset(topic, p).unwrap_or(0);
                (end - cursors.get(&(topic.to_owned(), p)).copied().unwrap_or(0)).max(0) as usize
            })
            .sum()
    }

    /// Waits until `topic`'s dead-letter topic holds `n` messages, and returns them all.
    pub async fn dead_letters(&self, topic: &str, n: usize, timeout: Duration) -> Result<Vec<DeadLetter>> {
        let dlq = dlq_topic(topic);
        self.wait_until(timeout, |d| d.messages(&dlq).len() >= n).await.map_err(|_| {
            Error::Usage(format!("expected {n} dead letter(s) on {dlq}, got {}", self.messages(&dlq).len()))
        })?;
        Ok(self.messages(&dlq).iter().filter_map(DeadLetter::from_raw).collect())
    }

    /// The committed position of the app's group on a partition.
    pub fn committed(&self, topic: &str, partition: i32) -> Option<i64> {
        self.broker.committed(self.app.id(), &TopicPartition { topic: topic.into(), partition })
    }

    /// Whether the app's group has committed every partition of `topic` up to
    /// its end (partitions that never held a message count as caught up).
    pub fn caught_up(&self, topic: &str) -> bool {
        (0..self.partitions(topic)).all(|p| {
            let end = self.broker.end_offset(topic, p);
            end == Some(0) || self.committed(topic, p) == end
        })
    }

    /// Waits until `done` holds, checking every few milliseconds.
    pub async fn wait_until(&self, timeout: Duration, done: impl Fn(&Self) -> bool) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        while !done(self) {
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Usage(format!("condition not met within {timeout:?}")));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// Stops the worker gracefully, returning what it returned.
    pub async fn stop(mut self) -> Result<()> {
        match self.worker.take() {
            Some(worker) => worker.stop().await,
            None => Ok(()),
        }
    }
}
