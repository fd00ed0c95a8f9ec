//! The `memory://` transport: an in-process broker with partitions, offsets,
//! consumer groups of one member, and commits.
//!
//! It keeps Kafka's semantics where they matter to an agent (per-partition order,
//! offsets, key partitioning with Kafka's murmur2, committed positions that
//! survive a consumer restart within the process) and is honest about the rest:
//! it is not distributed, a group has at most one consumer, and everything is
//! lost when the process exits.
//!
//! Brokers are named by the URL: every app in a process that uses
//! `memory://demo` shares one broker, so a one-process deployment of several
//! services works; `memory://` is the default broker.
//!
//! Retention: a partition drops records every group has committed past once it
//! holds more than [`MemoryBroker::retain_records`] (100,000 by default), so
//! memory stays flat under a steady stream; and it never holds more than
//! [`MemoryBroker::max_records`] (1,000,000 by default): beyond that the oldest
//! records go, consumed or not, as Kafka's size-based retention would.
//!
//! Storage: keys and values up to 1 KiB are copied on append into 16 KiB chunks
//! per partition, so a partition's records lie together in memory as in a log
//! segment (a consumer reads them in sequence, and the copies it gets share one
//! reference count per chunk). A chunk is freed with the last record in it.
//! A key and value that already lie side by side in one buffer (as Strom's
//! codecs encode them, or as a consumer read them from a log) are kept as
//! they are, sharing that buffer, instead of being copied again.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use tokio::sync::{Notify, mpsc, oneshot};

use super::{
    ConsumerControl, ConsumerEvent, ConsumerHandle, Headers, OutMessage, Producer, RawMessage, ReadBatch,
    TopicPartition, TopicSpec, Transport, TrySendError, partition_for_key,
};
use crate::error::{Error, Result};
use crate::tracking::{SendTracker, lock};

/// How many messages one consumer event carries at most.
const MAX_BATCH: usize = 2048;
/// How many messages are read from one partition before moving to the next.
const PARTITION_CHUNK: usize = 512;

fn err(reason: impl Into<String>) -> Error {
    Error::Transport { transport: "memory", reason: reason.into() }
}

/// An in-process broker. Cheap to clone; clones share the broker.
#[derive(Clone)]
pub struct MemoryBroker {
    inner: Arc<BrokerInner>,
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker").field("name", &self.inner.name).finish_non_exhaustive()
    }
}

struct BrokerInner {
    name: String,
    topics: RwLock<HashMap<String, Arc<MemTopic>>>,
    groups: Mutex<HashMap<String, Group>>,
    /// Woken when data arrives or topics appear.
    data: Notify,
    waiters: AtomicUsize,
    retain: AtomicUsize,
    cap: AtomicUsize,
}

#[derive(Default)]
struct Group {
    member: bool,
    committed: HashMap<TopicPartition, i64>,
}

struct MemTopic {
    spec: TopicSpec,
    partitions: Vec<Mutex<Log>>,
    round_robin: AtomicUsize,
}

#[derive(Default)]
struct Log {
    /// The offset of `records[0]`.
    base: i64,
    records: Records,
    /// Where small keys and values are copied on append, so that a partition's
    /// records lie together in memory, as in a log segment: a consumer reads
    /// them in sequence, and its copies share one reference count per chunk
    /// instead of touching one per message.
    arena: BytesMut,
}

struct Stored {
    key: Option<Bytes>,
    value: Option<Bytes>,
    headers: Headers,
    timestamp_ms: i64,
}

/// A log's records, in segments of [`SEGMENT`] records: a long log grows by
/// adding a segment, never by moving the records it holds to a larger
/// allocation (a `VecDeque` of 100,000 records copies 10 MB when it doubles).
#[derive(Default)]
struct Records {
    /// Only the first segment loses records (from its front) and only the
    /// last one gains them, so every segment in between holds `SEGMENT`.
    segments: VecDeque<VecDeque<Stored>>,
    len: usize,
}

/// Records per segment of a log.
const SEGMENT: usize = 4096;

impl Records {
    fn len(&self) -> usize {
        self.len
    }

    fn push_back(&mut self, stored: Stored) {
        match self.segments.back_mut() {
            // The first segment grows as needed, so short logs stay small.
            Some(last) if last.len() < SEGMENT => last.push_back(stored),
            _ => {
                let mut segment = VecDeque::with_capacity(if self.segments.is_empty() { 0 } else { SEGMENT });
                segment.push_back(stored);
                self.segments.push_back(segment);
            }
        }
        self.len += 1;
    }

    fn pop_front(&mut self) {
        let Some(first) = self.segments.front_mut() else { return };
        if first.pop_front().is_some() {
            self.len -= 1;
        }
        if first.is_empty() && self.segments.len() > 1 {
            self.segments.pop_front();
        }
    }

    /// The records from the `skip`th on.
    fn iter_from(&self, skip: usize) -> impl Iterator<Item = &Stored> {
        let first = self.segments.front().map_or(0, VecDeque::len);
        let (segment, index) =
            if skip < first { (0, skip) } else { (1 + (skip - first) / SEGMENT, (skip - first) % SEGMENT) };
        self.segments.range(segment.min(self.segments.len())..).enumerate().flat_map(move |(i, s)| {
            let from = if i == 0 { index.min(s.len()) } else { 0 };
            s.range(from..)
        })
    }
}

/// The size of a log's arena chunks.
const ARENA_CHUNK: usize = 16 * 1024;
/// Keys and values larger than this are kept as they come, not copied.
const ARENA_MAX_COPY: usize = 1024;

impl Log {
    fn end(&self) -> i64 {
        self.base + self.records.len() as i64
    }

    /// The bytes to store for a key or value: small ones copied into the arena.
    fn keep(&mut self, bytes: Option<Bytes>) -> Option<Bytes> {
        let bytes = bytes?;
        if bytes.is_empty() || bytes.len() > ARENA_MAX_COPY {
            return Some(bytes);
        }
        if self.arena.capacity() - self.arena.len() < bytes.len() {
            // A new chunk; the old one is freed with the last record in it.
            self.arena = BytesMut::with_capacity(ARENA_CHUNK);
        }
        self.arena.extend_from_slice(&bytes);
        Some(self.arena.split().freeze())
    }
}

/// Whether a key and value lie next to each other in one buffer: as Strom's
/// codecs encode them (into a shared per-thread buffer) or as a consumer read
/// them from a log. They are stored as they are: a copy would only put them
/// side by side again.
fn side_by_side(key: &Option<Bytes>, value: &Option<Bytes>) -> bool {
    match (key, value) {
        (Some(k), Some(v)) => !k.is_empty() && k.as_ptr().wrapping_add(k.len()) == v.as_ptr(),
        _ => false,
    }
}

fn now_ms() -> i64 {
    // What `chrono::Utc::now().timestamp_millis()` computes, without building a date.
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(since) => since.as_millis() as i64,
        Err(before) => -(before.duration().as_millis() as i64),
    }
}

impl MemoryBroker {
    /// A new broker of its own, shared with nobody.
    pub fn new() -> Self {
        Self::build(String::from("(private)"))
    }

    fn build(name: String) -> Self {
        MemoryBroker {
            inner: Arc::new(BrokerInner {
                name,
                topics: RwLock::default(),
                groups: Mutex::default(),
                data: Notify::new(),
                waiters: AtomicUsize::new(0),
                retain: AtomicUsize::new(100_000),
                cap: AtomicUsize::new(1_000_000),
            }),
        }
    }

    /// The broker of this process named `name` (the part after `memory://`),
    /// created on first use and kept while anything uses it.
    pub fn named(name: &str) -> Self {
        static REGISTRY: OnceLock<Mutex<HashMap<String, Weak<BrokerInner>>>> = OnceLock::new();
        let mut registry = lock(REGISTRY.get_or_init(Mutex::default));
        if let Some(inner) = registry.get(name).and_then(Weak::upgrade) {
            return MemoryBroker { inner };
        }
        let broker = Self::build(name.to_owned());
        registry.retain(|_, weak| weak.strong_count() > 0);
        registry.insert(name.to_owned(), Arc::downgrade(&broker.inner));
        broker
    }

    /// How many consumed records a partition keeps before dropping them.
    pub fn retain_records(&self, records: usize) -> &Self {
        self.inner.retain.store(records.max(1), Ordering::Relaxed);
        self
    }

    /// The most records a partition holds; the oldest go first.
    pub fn max_records(&self, records: usize) -> &Self {
        self.inner.cap.store(records.max(1), Ordering::Relaxed);
        self
    }

    /// The URL of this broker, if it is a named one.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    fn topic(&self, name: &str) -> Option<Arc<MemTopic>> {
        self.inner.topics.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(name).cloned()
    }

    /// Creates a topic unless it exists; an existing topic with another
    /// partition count is an error.
    pub fn create_topic(&self, spec: &TopicSpec) -> Result<()> {
        if spec.partitions < 1 {
            return Err(Error::Topic { topic: spec.name.clone(), reason: "needs at least one partition".into() });
        }
        let mut topics = self.inner.topics.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(existing) = topics.get(&spec.name) {
            let have = existing.spec.partitions;
            if have != spec.partitions {
                return Err(Error::Topic {
                    topic: spec.name.clone(),
                    reason: format!("exists with {have} partitions, declared with {}", spec.partitions),
                });
            }
            return Ok(());
        }
        let partitions = (0..spec.partitions).map(|_| Mutex::default()).collect();
        topics.insert(
            spec.name.clone(),
            Arc::new(MemTopic { spec: spec.clone(), partitions, round_robin: AtomicUsize::new(0) }),
        );
        drop(topics);
        self.wake();
        Ok(())
    }

    /// The names of all topics, sorted.
    pub fn topic_names(&self) -> Vec<String> {
        let topics = self.inner.topics.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut names: Vec<_> = topics.keys().cloned().collect();
        names.sort();
        names
    }

    /// The offset the next record of a partition will get.
    pub fn end_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        let t = self.topic(topic)?;
        let log = lock(t.partitions.get(usize::try_from(partition).ok()?)?);
        Some(log.end())
    }

    /// Reads up to `max` records of a partition from `offset` (records already
    /// dropped by retention are skipped).
    pub fn read(&self, topic: &str, partition: i32, offset: i64, max: usize) -> Vec<RawMessage> {
        let Some(t) = self.topic(topic) else { return Vec::new() };
        let Some(log) = usize::try_from(partition).ok().and_then(|p| t.partitions.get(p)) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let name: Arc<str> = Arc::from(topic);
        read_into(&lock(log), &name, partition, offset, max, &mut out);
        out
    }

    /// Appends a message, returning its partition and offset.
    pub fn append(&self, msg: OutMessage) -> Result<(i32, i64)> {
        let topic = self.topic(&msg.topic).ok_or_else(|| Error::Topic {
            topic: msg.topic.to_string(),
            reason: "does not exist (declare it with app.topic(..) so it is created on start)".into(),
        })?;
        self.append_to(&topic, msg)
    }

    fn append_to(&self, topic: &MemTopic, msg: OutMessage) -> Result<(i32, i64)> {
        let count = topic.partitions.len() as i32;
        let partition = match (msg.partition, &msg.key) {
            (Some(p), _) => p,
            (None, Some(key)) => partition_for_key(key, count),
            (None, None) => (topic.round_robin.fetch_add(1, Ordering::Relaxed) % count as usize) as i32,
        };
        let log = usize::try_from(partition).ok().and_then(|p| topic.partitions.get(p)).ok_or_else(|| {
            Error::Topic { topic: msg.topic.to_string(), reason: format!("has no partition {partition}") }
        })?;
        let offset = {
            let mut log = lock(log);
            let offset = log.end();
            let (key, value) = if side_by_side(&msg.key, &msg.value) {
                (msg.key, msg.value)
            } else {
                (log.keep(msg.key), log.keep(msg.value))
            };
            log.records.push_back(Stored {
                key,
                value,
                headers: msg.headers,
                timestamp_ms: msg.timestamp_ms.unwrap_or_else(now_ms),
            });
            if log.records.len() > self.inner.cap.load(Ordering::Relaxed) {
                log.records.pop_front();
                log.base += 1;
            }
            offset
        };
        self.wake();
        Ok((partition, offset))
    }

    fn wake(&self) {
        if self.inner.waiters.load(Ordering::Acquire) > 0 {
            self.inner.data.notify_waiters();
        }
    }

    /// The committed position of a group on a partition.
    pub fn committed(&self, group: &str, tp: &TopicPartition) -> Option<i64> {
        lock(&self.inner.groups).get(group).and_then(|g| g.committed.get(tp).copied())
    }

    fn commit(&self, group: &str, offsets: &[(TopicPartition, i64)]) {
        let mut groups = lock(&self.inner.groups);
        let g = groups.entry(group.to_owned()).or_default();
        for (tp, offset) in offsets {
            g.committed.insert(tp.clone(), *offset);
        }
        // Retention: drop what every group has committed past.
        let retain = self.inner.retain.load(Ordering::Relaxed);
        for (tp, _) in offsets {
            let min_committed = groups.values().filter_map(|g| g.committed.get(tp)).min().copied();
            let (Some(min), Some(topic)) = (min_committed, self.topic(&tp.topic)) else { continue };
            if let Some(log) = usize::try_from(tp.partition).ok().and_then(|p| topic.partitions.get(p)) {
                let mut log = lock(log);
                while log.records.len() > retain && log.base < min {
                    log.records.pop_front();
                    log.base += 1;
                }
            }
        }
    }
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

fn read_into(log: &Log, topic: &Arc<str>, partition: i32, from: i64, max: usize, out: &mut Vec<RawMessage>) -> i64 {
    let start = from.max(log.base);
    let skip = ((start - log.base) as usize).min(log.records.len());
    let end = skip.saturating_add(max).min(log.records.len());
    let mut next = start;
    // `range` is O(1) to start, unlike `iter().skip(..)`.
    for stored in log.records.iter_from(skip).take(end - skip) {
        out.push(RawMessage {
            topic: topic.clone(),
            partition,
            offset: next,
            key: stored.key.clone(),
            value: stored.value.clone(),
            headers: stored.headers.clone(),
            timestamp_ms: Some(stored.timestamp_ms),
        });
        next += 1;
    }
    next
}

/// The transport over a [`MemoryBroker`].
pub struct MemoryTransport {
    broker: MemoryBroker,
    producer: Arc<MemoryProducer>,
}

impl MemoryTransport {
    /// A transport on `broker`, reporting acknowledgements to `sends`.
    pub fn new(broker: MemoryBroker, sends: Arc<SendTracker>) -> Self {
        MemoryTransport {
            producer: Arc::new(MemoryProducer { broker: broker.clone(), sends, cache: RwLock::default() }),
            broker,
        }
    }

    /// The broker.
    pub fn broker(&self) -> &MemoryBroker {
        &self.broker
    }
}

struct MemoryProducer {
    broker: MemoryBroker,
    sends: Arc<SendTracker>,
    /// Topics by the address of the name a `Topic` sends with, so the hot path
    /// neither hashes the name nor takes the broker's topic lock.
    cache: RwLock<Vec<(Arc<str>, Arc<MemTopic>)>>,
}

impl MemoryProducer {
    fn appended(&self, outcome: Result<(i32, i64)>, seq: u64) -> Result<(), TrySendError> {
        match outcome {
            Ok(_) => {
                self.sends.ack(seq);
                Ok(())
            }
            Err(e) => Err(TrySendError::Fatal(e)),
        }
    }
}

#[async_trait]
impl Producer for MemoryProducer {
    fn try_send(&self, msg: OutMessage, seq: u64) -> Result<(), TrySendError> {
        {
            // The common case: appended under the cache's read lock, without
            // touching the topic's reference count.
            let cache = self.cache.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((_, topic)) = cache.iter().find(|(n, _)| Arc::ptr_eq(n, &msg.topic)) {
                let outcome = self.broker.append_to(topic, msg);
                drop(cache);
                return self.appended(outcome, seq);
            }
        }
        let Some(topic) = self.broker.topic(&msg.topic) else {
            return self.broker.append(msg).map(|_| ()).map_err(TrySendError::Fatal);
        };
        {
            let mut cache = self.cache.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            if cache.len() < 64 {
                cache.push((msg.topic.clone(), topic.clone()));
            }
        }
        let outcome = self.broker.append_to(&topic, msg);
        self.appended(outcome, seq)
    }

    async fn flush(&self, _timeout: Duration) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
impl Transport for MemoryTransport {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn ensure_topics(&self, specs: &[TopicSpec]) -> Result<()> {
        specs.iter().try_for_each(|spec| self.broker.create_topic(spec))
    }

    async fn partitions(&self, topic: &str) -> Result<Option<i32>> {
        Ok(self.broker.topic(topic).map(|t| t.spec.partitions))
    }

    fn producer(&self) -> Arc<dyn Producer> {
        self.producer.clone()
    }

    fn consumer(&self, group: &str, topics: &[String]) -> Result<ConsumerHandle> {
        {
            let mut groups = lock(&self.broker.inner.groups);
            let g = groups.entry(group.to_owned()).or_default();
            if g.member {
                return Err(err(format!(
                    "group {group} already has a consumer: memory:// is one process, run one worker per app"
                )));
            }
            g.member = true;
        }
        let control = Arc::new(MemoryConsumer {
            broker: self.broker.clone(),
            group: group.to_owned(),
            subscription: Mutex::new(topics.to_vec()),
            paused: Mutex::default(),
            closed: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(run_consumer(control.clone(), tx));
        Ok(ConsumerHandle { events: rx, control })
    }

    async fn committed(&self, group: &str, tp: &TopicPartition) -> Result<Option<i64>> {
        Ok(self.broker.committed(group, tp))
    }

    async fn read(&self, tp: &TopicPartition, from: i64, max: usize) -> Result<ReadBatch> {
        let messages = self.broker.read(&tp.topic, tp.partition, from, max);
        let next = match messages.last() {
            Some(last) if messages.len() >= max => last.offset + 1,
            _ => self.broker.end_offset(&tp.topic, tp.partition).unwrap_or(from).max(from),
        };
        Ok(ReadBatch { messages, next })
    }

    fn memory_broker(&self) -> Option<MemoryBroker> {
        Some(self.broker.clone())
    }
}

struct MemoryConsumer {
    broker: MemoryBroker,
    group: String,
    subscription: Mutex<Vec<String>>,
    paused: Mutex<HashSet<TopicPartition>>,
    closed: AtomicBool,
}

impl ConsumerControl for MemoryConsumer {
    fn commit(&self, offsets: &[(TopicPartition, i64)]) -> Result<()> {
        self.broker.commit(&self.group, offsets);
        Ok(())
    }

    fn pause(&self, partitions: &[TopicPartition]) {
        lock(&self.paused).extend(partitions.iter().cloned());
    }

    fn resume(&self, partitions: &[TopicPartition]) {
        let mut paused = lock(&self.paused);
        for tp in partitions {
            paused.remove(tp);
        }
        drop(paused);
        self.broker.inner.data.notify_waiters();
    }

    fn subscribe(&self, topics: &[String]) -> Result<()> {
        *lock(&self.subscription) = topics.to_vec();
        self.broker.inner.data.notify_waiters();
        Ok(())
    }

    fn end_offset(&self, tp: &TopicPartition) -> Option<i64> {
        self.broker.end_offset(&tp.topic, tp.partition)
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.broker.inner.data.notify_waiters();
    }
}

impl Drop for MemoryConsumer {
    fn drop(&mut self) {
        if let Some(g) = lock(&self.broker.inner.groups).get_mut(&self.group) {
            g.member = false;
        }
    }
}

/// The consumer loop: keeps the assignment equal to every partition of the
/// subscribed topics and delivers their records in batches.
async fn run_consumer(control: Arc<MemoryConsumer>, tx: mpsc::Sender<ConsumerEvent>) {
    let broker = control.broker.clone();
    let mut positions: BTreeMap<TopicPartition, i64> = BTreeMap::new();
    let mut logs: HashMap<Arc<str>, Arc<MemTopic>> = HashMap::new();
    let mut start = 0usize;
    loop {
        if control.closed.load(Ordering::Acquire) {
            break;
        }
        // Register for wake-ups before looking, so nothing slips in between.
        let notified = broker.inner.data.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();

        // Follow the subscription.
        let wanted: Vec<String> = lock(&control.subscription).clone();
        let mut desired = BTreeMap::new();
        for name in &wanted {
            if let Some(topic) = broker.topic(name) {
                let name: Arc<str> = Arc::from(name.as_str());
                for p in 0..topic.spec.partitions {
                    desired.insert(TopicPartition { topic: name.clone(), partition: p }, ());
                }
                logs.insert(name, topic);
            }
        }
        let revoked: Vec<_> = positions.keys().filter(|tp| !desired.contains_key(*tp)).cloned().collect();
        if !revoked.is_empty() {
            let (done_tx, done_rx) = oneshot::channel();
            if tx.send(ConsumerEvent::Revoked(revoked.clone(), done_tx)).await.is_err() {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_secs(60), done_rx).await;
            for tp in &revoked {
                positions.remove(tp);
            }
        }
        let assigned: Vec<_> = desired.keys().filter(|tp| !positions.contains_key(*tp)).cloned().collect();
        if !assigned.is_empty() {
            for tp in &assigned {
                let log_base = logs
                    .get(&tp.topic)
                    .and_then(|t| t.partitions.get(tp.partition as usize))
                    .map_or(0, |l| lock(l).base);
                let pos = broker.committed(&control.group, tp).unwrap_or(log_base);
                positions.insert(tp.clone(), pos);
            }
            if tx.send(ConsumerEvent::Assigned(assigned)).await.is_err() {
                break;
            }
        }

        // Read a batch, fairly across partitions.
        let paused = lock(&control.paused).clone();
        let mut batch = Vec::new();
        let count = positions.len();
        let keys: Vec<TopicPartition> = positions.keys().cloned().collect();
        for i in 0..count {
            if batch.len() >= MAX_BATCH {
                break;
            }
            let tp = &keys[(start + i) % count];
            if paused.contains(tp) {
                continue;
            }
            let Some(log) = logs.get(&tp.topic).and_then(|t| t.partitions.get(tp.partition as usize)) else {
                continue;
            };
            let pos = positions.get(tp).copied().unwrap_or(0);
            let room = PARTITION_CHUNK.min(MAX_BATCH - batch.len());
            let log = lock(log);
            if batch.capacity() == 0 && log.end() > pos {
                // Room for a whole batch at once, not grown message by message.
                batch.reserve(MAX_BATCH);
            }
            let next = read_into(&log, &tp.topic, tp.partition, pos, room, &mut batch);
            drop(log);
            positions.insert(tp.clone(), next);
        }
        start = start.wrapping_add(1);
        if !batch.is_empty() {
            if tx.send(ConsumerEvent::Messages(batch)).await.is_err() {
                break;
            }
            continue;
        }
        broker.inner.waiters.fetch_add(1, Ordering::AcqRel);
        let _ = tokio::time::timeout(Duration::from_millis(250), notified).await;
        broker.inner.waiters.fetch_sub(1, Ordering::AcqRel);
    }
    // Leave the group before the event channel closes: whoever waits for the
    // close may start the next member at once.
    if let Some(g) = lock(&broker.inner.groups).get_mut(&control.group) {
        g.member = false;
    }
    drop(tx);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, partitions: i32) -> TopicSpec {
        TopicSpec { name: name.into(), partitions, replication: 1, config: BTreeMap::new() }
    }

    fn msg(topic: &str, key: &str, value: &str) -> OutMessage {
        OutMessage {
            topic: topic.into(),
            partition: None,
            key: Some(Bytes::copy_from_slice(key.as_bytes())),
            value: Some(Bytes::copy_from_slice(value.as_bytes())),
            headers: Vec::new(),
            timestamp_ms: None,
        }
    }

    #[test]
    fn keys_land_on_the_kafka_partition_and_offsets_grow() {
        let b = MemoryBroker::new();
        b.create_topic(&spec("t", 4)).unwrap();
        let (p1, o1) = b.append(msg("t", "k", "1")).unwrap();
        let (p2, o2) = b.append(msg("t", "k", "2")).unwrap();
        assert_eq!((p1, o1 + 1), (p2, o2));
        assert_eq!(p1, partition_for_key(b"k", 4));
        let read = b.read("t", p1, 0, 10);
        assert_eq!(read.len(), 2);
        assert_eq!(read[1].value.as_deref(), Some(&b"2"[..]));
    }

    #[test]
    fn small_records_are_copied_together_and_large_ones_kept() {
        let b = MemoryBroker::new();
        b.create_topic(&spec("t", 1)).unwrap();
        let large = Bytes::from(vec![7u8; ARENA_MAX_COPY + 1]);
        for i in 0..3000 {
            b.append(msg("t", &format!("k{i}"), &format!("value {i}"))).unwrap();
        }
        b.append(OutMessage { value: Some(large.clone()), ..msg("t", "k", "") }).unwrap();
        b.append(OutMessage { key: None, value: None, ..msg("t", "", "") }).unwrap();
        let read = b.read("t", 0, 0, 4000);
        assert_eq!(read.len(), 3002);
        for (i, m) in read.iter().take(3000).enumerate() {
            assert_eq!(m.key.as_deref(), Some(format!("k{i}").as_bytes()));
            assert_eq!(m.value.as_deref(), Some(format!("value {i}").as_bytes()));
        }
        let (k0, v0) = (read[0].key.as_ref().unwrap(), read[0].value.as_ref().unwrap());
        assert_eq!(k0.as_ptr().wrapping_add(k0.len()), v0.as_ptr(), "stored side by side");
        assert_eq!(read[3000].value.as_ref().map(|v| v.as_ptr()), Some(large.as_ptr()), "not copied");
        assert_eq!((read[3001].key.clone(), read[3001].value.clone()), (None, None));
    }

    #[test]
    fn a_key_and_value_side_by_side_are_kept_as_they_are() {
        let b = MemoryBroker::new();
        b.create_topic(&spec("t", 1)).unwrap();
        let both = Bytes::from_static(b"keyvalue");
        let (key, value) = (both.slice(..3), both.slice(3..));
        b.append(OutMessage { key: Some(key.clone()), value: Some(value.clone()), ..msg("t", "", "") }).unwrap();
        let read = b.read("t", 0, 0, 1);
        assert_eq!(read[0].key.as_ref().map(|k| k.as_ptr()), Some(key.as_ptr()), "not copied");
        assert_eq!(read[0].value.as_ref().map(|v| v.as_ptr()), Some(value.as_ptr()), "not copied");
        assert_eq!(read[0].value.as_deref(), Some(&b"value"[..]));
    }

    #[test]
    fn long_logs_read_across_segments() {
        let b = MemoryBroker::new();
        b.max_records(2 * SEGMENT + 10);
        b.create_topic(&spec("t", 1)).unwrap();
        let total = 3 * SEGMENT as i64 + 7;
        for i in 0..total {
            b.append(msg("t", "k", &i.to_string())).unwrap();
        }
        let first = total - (2 * SEGMENT as i64 + 10);
        for from in [0, first, first + 5, SEGMENT as i64, 2 * SEGMENT as i64 - 1, total - 3, total] {
            let read = b.read("t", 0, from, SEGMENT + 3);
            let want: Vec<i64> = (from.max(first)..total).take(SEGMENT + 3).collect();
            assert_eq!(read.iter().map(|m| m.offset).collect::<Vec<_>>(), want, "from {from}");
            for m in &read {
                assert_eq!(m.value.as_deref(), Some(m.offset.to_string().as_bytes()));
            }
        }
    }

    #[test]
    fn partition_count_mismatch_is_reported() {
        let b = MemoryBroker::new();
        b.create_topic(&spec("t", 4)).unwrap();
        let e = b.create_topic(&spec("t", 2)).unwrap_err();
        assert!(e.to_string().contains("exists with 4 partitions, declared with 2"), "{e}");
        let e = b.append(msg("nope", "k", "v")).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
    }

    #[test]
    fn named_brokers_are_shared() {
        let a = MemoryBroker::named("shared-test");
        a.create_topic(&spec("x", 1)).unwrap();
        let b = MemoryBroker::named("shared-test");
        assert_eq!(b.topic_names(), vec!["x".to_owned()]);
        assert!(MemoryBroker::named("other-test").topic_names().is_empty());
    }

    #[test]
    fn retention_drops_only_committed_records() {
        let b = MemoryBroker::new();
        b.retain_records(2);
        b.create_topic(&spec("t", 1)).unwrap();
        for i in 0..10 {
            b.append(msg("t", "k", &i.to_string())).unwrap();
        }
        let tp = TopicPartition { topic: "t".into(), partition: 0 };
        b.commit("g", &[(tp, 5)]);
        let left = b.read("t", 0, 0, 100);
        assert_eq!(left.first().map(|m| m.offset), Some(5), "uncommitted records are kept");
        assert_eq!(b.end_offset("t", 0), Some(10));
    }

    #[test]
    fn a_partition_never_holds_more_than_its_cap() {
        let b = MemoryBroker::new();
        b.max_records(3);
        b.create_topic(&spec("t", 1)).unwrap();
        for i in 0..10 {
            b.append(msg("t", "k", &i.to_string())).unwrap();
        }
        let left: Vec<i64> = b.read("t", 0, 0, 100).iter().map(|m| m.offset).collect();
        assert_eq!(left, [7, 8, 9], "the oldest go; offsets are kept");
    }

    #[tokio::test]
    async fn consumer_assigns_reads_and_resumes_from_commits() {
        let b = MemoryBroker::new();
        b.create_topic(&spec("t", 2)).unwrap();
        let sends = SendTracker::new();
        let transport = MemoryTransport::new(b.clone(), sends);
        for i in 0..10 {
            b.append(OutMessage { partition: Some(i % 2), ..msg("t", "k", &i.to_string()) }).unwrap();
        }
        let mut c = transport.consumer("g", &["t".into()]).unwrap();
        assert!(transport.consumer("g", &["t".into()]).is_err(), "one member per group");
        match c.events.recv().await {
            Some(ConsumerEvent::Assigned(tps)) => assert_eq!(tps.len(), 2),
            other => panic!("expected assignment, got {other:?}"),
        }
        let mut seen = 0;
        while seen < 10 {
            match c.events.recv().await {
                Some(ConsumerEvent::Messages(m)) => seen += m.len(),
                other => panic!("expected messages, got {other:?}"),
            }
        }
        let tp0 = TopicPartition { topic: "t".into(), partition: 0 };
        c.control.commit(&[(tp0.clone(), 3)]).unwrap();
        c.control.close();
        while c.events.recv().await.is_some() {}
        drop(c);
        let mut c = transport.consumer("g", &["t".into()]).unwrap();
        let _assigned = c.events.recv().await;
        let Some(ConsumerEvent::Messages(m)) = c.events.recv().await else { panic!("expected messages") };
        let p0: Vec<i64> = m.iter().filter(|m| m.partition == 0).map(|m| m.offset).collect();
        assert_eq!(p0.first(), Some(&3), "resumes at the committed position");
        c.control.close();
    }
}
