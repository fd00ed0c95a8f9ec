//! Transports: where topics live. `memory://` (an in-process broker) and, with
//! the `kafka` feature, `kafka://` (librdkafka).
//!
//! The rest of the library talks to a transport through three small interfaces:
//! [`Transport`] (topics, producer, consumers), [`Producer`] (non-blocking sends
//! whose acknowledgements go to the [`SendTracker`](crate::tracking::SendTracker))
//! and a consumer that delivers [`ConsumerEvent`]s over a bounded channel and is
//! steered through [`ConsumerControl`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::tracking::SendTracker;

#[cfg(feature = "kafka")]
pub mod kafka;
pub mod memory;

/// Message headers: names and raw values, in order.
pub type Headers = Vec<(String, Bytes)>;

/// A topic and one of its partitions.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// The topic.
    pub topic: Arc<str>,
    /// The partition.
    pub partition: i32,
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]", self.topic, self.partition)
    }
}

/// A message as read from a broker.
#[derive(Debug, Clone)]
pub struct RawMessage {
    /// The topic.
    pub topic: Arc<str>,
    /// The partition.
    pub partition: i32,
    /// The offset.
    pub offset: i64,
    /// The key bytes, if any.
    pub key: Option<Bytes>,
    /// The value bytes (`None` for a tombstone).
    pub value: Option<Bytes>,
    /// The headers.
    pub headers: Headers,
    /// The broker timestamp in epoch milliseconds.
    pub timestamp_ms: Option<i64>,
}

/// A message to send.
#[derive(Debug, Clone)]
pub struct OutMessage {
    /// The destination topic.
    pub topic: Arc<str>,
    /// An explicit partition; `None` lets the partitioner choose from the key.
    pub partition: Option<i32>,
    /// The key bytes.
    pub key: Option<Bytes>,
    /// The value bytes (`None` for a tombstone).
    pub value: Option<Bytes>,
    /// The headers.
    pub headers: Headers,
    /// The timestamp in epoch milliseconds; `None` means now.
    pub timestamp_ms: Option<i64>,
}

/// How a topic is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// The name.
    pub name: String,
    /// The number of partitions.
    pub partitions: i32,
    /// The replication factor (Kafka only).
    pub replication: i16,
    /// Topic configs, Kafka names (`retention.ms`, `cleanup.policy`, ...).
    pub config: BTreeMap<String, String>,
}

/// Why a send was not queued.
#[derive(Debug)]
pub enum TrySendError {
    /// The producer queue is full: wait and try again.
    QueueFull(Box<OutMessage>),
    /// The message can never be sent (unknown topic, too large, ...).
    Fatal(Error),
}

/// The sending half of a transport.
#[async_trait]
pub trait Producer: Send + Sync + 'static {
    /// Queues a message without waiting. `seq` comes from
    /// [`SendTracker::issue`]; the transport reports its outcome with
    /// [`SendTracker::ack`] or [`SendTracker::fail`]. On an error nothing was
    /// queued, and the caller retires `seq`.
    fn try_send(&self, msg: OutMessage, seq: u64) -> Result<(), TrySendError>;

    /// Waits until every queued message was acknowledged or failed.
    async fn flush(&self, timeout: Duration) -> Result<()>;
}

/// What a consumer reports to the worker.
#[derive(Debug)]
pub enum ConsumerEvent {
    /// Partitions were assigned; messages from them follow.
    Assigned(Vec<TopicPartition>),
    /// Partitions are being taken away. The worker drains and commits them, then
    /// answers on the sender; the consumer waits for that answer (bounded).
    Revoked(Vec<TopicPartition>, oneshot::Sender<()>),
    /// Messages, in offset order per partition.
    Messages(Vec<RawMessage>),
    /// The consumer failed and stopped.
    Failed(Error),
}

/// Steering a running consumer.
pub trait ConsumerControl: Send + Sync + 'static {
    /// Commits positions (for each partition, the offset of the next message
    /// to read) and returns once the broker confirmed them. It may block for a
    /// round trip: call it from a blocking context.
    fn commit(&self, offsets: &[(TopicPartition, i64)]) -> Result<()>;
    /// Stops fetching from these partitions.
    fn pause(&self, partitions: &[TopicPartition]);
    /// Fetches from these partitions again.
    fn resume(&self, partitions: &[TopicPartition]);
    /// Replaces the subscription.
    fn subscribe(&self, topics: &[String]) -> Result<()>;
    /// The last known end offset of an assigned partition (for lag), if known.
    fn end_offset(&self, tp: &TopicPartition) -> Option<i64>;
    /// Stops the consumer and leaves the group. The event channel closes once
    /// it has left; commits are no longer possible.
    fn close(&self);
}

/// Messages read directly from a partition, outside any consumer group.
#[derive(Debug, Default)]
pub struct ReadBatch {
    /// The messages, in offset order.
    pub messages: Vec<RawMessage>,
    /// The offset to read next: the end of the partition when fewer than the
    /// requested messages came back.
    pub next: i64,
}

/// A running consumer: its events and its controls.
pub struct ConsumerHandle {
    /// Events, in order.
    pub events: mpsc::Receiver<ConsumerEvent>,
    /// Controls.
    pub control: Arc<dyn ConsumerControl>,
}

/// A broker connection.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// `memory` or `kafka`.
    fn kind(&self) -> &'static str;

    /// Creates the topics that are missing; fails when one exists with a
    /// different partition count.
    async fn ensure_topics(&self, specs: &[TopicSpec]) -> Result<()>;

    /// The partition count of a topic, `None` when it does not exist.
    async fn partitions(&self, topic: &str) -> Result<Option<i32>>;

    /// The producer (one per transport, shared).
    fn producer(&self) -> Arc<dyn Producer>;

    /// Starts a consumer in `group` subscribed to `topics`.
    fn consumer(&self, group: &str, topics: &[String]) -> Result<ConsumerHandle>;

    /// The committed position of a group on a partition, if any.
    async fn committed(&self, group: &str, tp: &TopicPartition) -> Result<Option<i64>>;

    /// Reads up to `max` messages of a partition from offset `from`, without
    /// waiting for more than what the partition holds now. For tools and tests.
    async fn read(&self, tp: &TopicPartition, from: i64, max: usize) -> Result<ReadBatch>;

    /// The in-process broker, for `memory://`.
    fn memory_broker(&self) -> Option<memory::MemoryBroker> {
        None
    }
}

/// Opens the transport named by a broker URL.
pub fn connect(url: &str, config: &crate::AppConfig, sends: Arc<SendTracker>) -> Result<Arc<dyn Transport>> {
    if let Some(name) = url.strip_prefix("memory://") {
        return Ok(Arc::new(memory::MemoryTransport::new(memory::MemoryBroker::named(name), sends)));
    }
    if let Some(servers) = url.strip_prefix("kafka://") {
        #[cfg(feature = "kafka")]
        return Ok(Arc::new(kafka::KafkaTransport::new(servers, config, sends)?));
        #[cfg(not(feature = "kafka"))]
        {
            let _ = (servers, config);
            return Err(Error::Config(format!(
                "broker {url}: this build has no Kafka transport (enable the `kafka` feature of stream-core)"
            )));
        }
    }
    Err(Error::Config(format!("broker {url:?}: expected memory:// or kafka://host:port")))
}

/// Kafka's default partitioner (murmur2 of the key, as the Java client and
/// librdkafka's `murmur2_random`), so the memory transport places keys where
/// Kafka would.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    let hash = murmur2(key) & 0x7fff_ffff;
    (hash % partitions.max(1) as u32) as i32
}

/// Kafka's murmur2 (seed 0x9747b28c).
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = 0x9747_b28c ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // Values from Kafka's UtilsTest.testMurmur2.
        let cases: [(&[u8], i32); 4] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
        ];
        for (input, expected) in cases {
            assert_eq!(murmur2(input) as i32, expected, "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn partitions_are_stable_and_in_range() {
        for i in 0..1000 {
            let key = format!("key-{i}");
            let p = partition_for_key(key.as_bytes(), 4);
            assert!((0..4).contains(&p));
            assert_eq!(p, partition_for_key(key.as_bytes(), 4));
        }
    }
}
