//! The `kafka://` transport, on librdkafka (rdkafka's bundled build).
//!
//! - The producer is a `ThreadedProducer`: `try_send` queues without waiting
//!   and the delivery callback reports each acknowledgement to the
//!   [`SendTracker`], so many sends are in flight at once.
//! - Each consumer is a `BaseConsumer` polled by its own thread. The thread
//!   batches messages into [`ConsumerEvent::Messages`] and runs the rebalance
//!   callbacks: on revoke it hands the worker a [`ConsumerEvent::Revoked`] and
//!   waits (bounded) for the worker to drain and commit before librdkafka lets
//!   the partitions go.
//! - Every `STROM_KAFKA_<PROPERTY>` variable is passed to librdkafka as is,
//!   after Strom's defaults, so it can override them.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers as _, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};

use super::{
    ConsumerControl, ConsumerEvent, ConsumerHandle, OutMessage, Producer, RawMessage, ReadBatch, TopicPartition,
    TopicSpec, Transport, TrySendError,
};
use crate::error::{Error, Result};
use crate::tracking::{SendTracker, lock};

/// Messages per [`ConsumerEvent::Messages`] batch, at most.
const BATCH: usize = 1024;
/// How long metadata and admin requests may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

fn kafka_err(context: impl std::fmt::Display, e: impl std::fmt::Display) -> Error {
    Error::Transport { transport: "kafka", reason: format!("{context}: {e}") }
}

/// The transport over a Kafka cluster.
pub struct KafkaTransport {
    servers: String,
    properties: BTreeMap<String, String>,
    revoke_timeout: Duration,
    producer: Arc<KafkaProducer>,
    admin: AdminClient<DefaultClientContext>,
    /// Group-less consumers for [`Transport::read`] and metadata.
    readers: Arc<Readers>,
}

impl KafkaTransport {
    /// Connects to `servers` (`host:port[,host:port]`) with the app's
    /// librdkafka properties. Nothing is contacted until the first request.
    pub fn new(servers: &str, config: &crate::AppConfig, sends: Arc<SendTracker>) -> Result<Self> {
        if servers.trim().is_empty() {
            return Err(Error::Config("kafka:// needs at least one host:port".into()));
        }
        let properties = config.kafka.clone();
        let client_id = format!("strom-{}", config.id);
        let base = |defaults: &[(&str, &str)]| client_config(servers, &client_id, defaults, &properties);
        let producer: ThreadedProducer<ProducerCtx> = base(&[
            // Place keys where the Java clients (and the memory transport) do.
            ("partitioner", "murmur2_random"),
            ("linger.ms", "5"),
        ])
        .create_with_context(ProducerCtx { sends })
        .map_err(|e| Error::Config(format!("Kafka producer: {e}")))?;
        let admin: AdminClient<DefaultClientContext> =
            base(&[]).create().map_err(|e| Error::Config(format!("Kafka admin client: {e}")))?;
        // Reads stop at a partition's end: the broker need not hold an empty fetch.
        let reader_config = base(&[
            ("enable.partition.eof", "true"),
            ("enable.auto.commit", "false"),
            ("fetch.wait.max.ms", "10"),
            // What a reader may fetch ahead (librdkafka's default is 64 MiB;
            // a recovery reads 50,000 records at a time).
            ("queued.max.messages.kbytes", "16384"),
        ])
        .set("group.id", format!("{}-reader", config.id))
        .clone();
        let readers = Arc::new(Readers { config: reader_config, idle: Mutex::default() });
        // Fail on a bad property now, not at the first read.
        let first = readers.take(None)?;
        readers.give_back(first, None);
        Ok(KafkaTransport {
            servers: servers.to_owned(),
            properties,
            revoke_timeout: config.shutdown_timeout,
            producer: Arc::new(KafkaProducer { producer }),
            admin,
            readers,
        })
    }

    fn consumer_config(&self, group: &str) -> ClientConfig {
        let defaults = [
            ("group.id", group),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            // Partition end offsets for the lag metric come with the statistics.
            ("statistics.interval.ms", "1000"),
        ];
        client_config(&self.servers, &format!("strom-{group}"), &defaults, &self.properties)
    }

    /// Partition counts of the topics that exist, by name.
    async fn partition_counts(&self, names: Vec<String>) -> Result<HashMap<String, i32>> {
        let readers = self.readers.clone();
        blocking(move || {
            let reader = readers.take(None)?;
            let mut out = HashMap::new();
            let mut failed = None;
            for name in names {
                match reader.consumer.fetch_metadata(Some(&name), REQUEST_TIMEOUT) {
                    Ok(md) => {
                        for t in md.topics() {
                            if t.error().is_none() && !t.partitions().is_empty() {
                                out.insert(t.name().to_owned(), t.partitions().len() as i32);
                            }
                        }
                    }
                    Err(e) => {
                        failed = Some(kafka_err(format!("metadata of topic {name}"), e));
                        break;
                    }
                }
            }
            readers.give_back(reader, None);
            failed.map_or(Ok(out), Err)
        })
        .await
    }
}

/// Consumers outside any group that read partitions by offset (table
/// recovery, standbys, the test driver) and fetch metadata. A read that stops
/// before the partition's end leaves its consumer assigned where it stopped,
/// so librdkafka goes on fetching what the next read of that partition will
/// ask for; one that reaches the end lets the partition go. Reads of several
/// partitions run side by side, each on its own consumer.
struct Readers {
    config: ClientConfig,
    idle: Mutex<Vec<Reader>>,
}

struct Reader {
    consumer: BaseConsumer<ReaderCtx>,
    /// The partition it is still assigned and the offset it will return next.
    at: Option<(TopicPartition, i64)>,
    since: Instant,
}

/// Idle readers kept for the next reads.
const IDLE_READERS: usize = 8;
/// How long an idle reader may stay assigned (fetching ahead) before it lets go.
const READ_AHEAD_FOR: Duration = Duration::from_secs(5);

impl Readers {
    /// A reader: the one already positioned at `at` if there is one, else an
    /// idle one or a new one.
    fn take(&self, at: Option<(&TopicPartition, i64)>) -> Result<Reader> {
        let found = {
            let mut idle = lock(&self.idle);
            for r in idle.iter_mut() {
                if r.at.is_some() && r.since.elapsed() > READ_AHEAD_FOR {
                    let _ = r.consumer.unassign();
                    r.at = None;
                }
            }
            let positioned = at.and_then(|(tp, from)| {
                idle.iter().position(|r| r.at.as_ref().is_some_and(|(t, o)| t == tp && *o == from))
            });
            // A reader positioned for another read is left to it.
            positioned.or_else(|| idle.iter().position(|r| r.at.is_none())).map(|i| idle.swap_remove(i))
        };
        match found {
            Some(r) => Ok(r),
            None => {
                let consumer = self
                    .config
                    .create_with_context(ReaderCtx)
                    .map_err(|e| Error::Config(format!("Kafka consumer: {e}")))?;
                Ok(Reader { consumer, at: None, since: Instant::now() })
            }
        }
    }

    /// Returns a reader to the pool, still assigned to `at` if given.
    fn give_back(&self, mut reader: Reader, at: Option<(TopicPartition, i64)>) {
        if at.is_none() && reader.at.is_some() {
            let _ = reader.consumer.unassign();
        }
        reader.at = at;
        reader.since = Instant::now();
        let mut idle = lock(&self.idle);
        if idle.len() < IDLE_READERS {
            idle.push(reader);
        }
    }

    /// Up to `max` messages of `tp` from `from`, fewer at the partition's end.
    fn read(&self, tp: &TopicPartition, from: i64, max: usize) -> Result<ReadBatch> {
        let mut reader = self.take(Some((tp, from)))?;
        if reader.at.as_ref().is_none_or(|(t, o)| t != tp || *o != from) {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(from))
                .map_err(|e| kafka_err("reading", e))?;
            reader.consumer.assign(&tpl).map_err(|e| kafka_err(format!("assigning {tp}"), e))?;
            reader.at = Some((tp.clone(), from));
        }
        let consumer = &reader.consumer;
        let mut batch = ReadBatch { messages: Vec::with_capacity(max.min(BATCH)), next: from };
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let mut topics = HashMap::new();
        let mut at_end = false;
        while batch.messages.len() < max {
            match consumer.poll(Duration::from_millis(100)) {
                // librdkafka drops what was fetched for an earlier assignment;
                // this only makes sure of it.
                Some(Ok(m)) if m.partition() != tp.partition || m.topic() != &*tp.topic => {}
                Some(Err(KafkaError::PartitionEOF(p))) if p != tp.partition => {}
                Some(Ok(m)) => {
                    batch.next = m.offset() + 1;
                    batch.messages.push(raw_message(&m, &mut topics));
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    // The end: past control records too.
                    if let Ok(pos) = consumer.position()
                        && let Some(Offset::Offset(o)) = pos.find_partition(&tp.topic, tp.partition).map(|e| e.offset())
                    {
                        batch.next = batch.next.max(o);
                    }
                    at_end = true;
                    break;
                }
                Some(Err(e)) => {
                    self.give_back(reader, None);
                    return Err(kafka_err(format!("reading {tp}"), e));
                }
                None if Instant::now() >= deadline => {
                    self.give_back(reader, None);
                    return Err(kafka_err(format!("reading {tp}"), format!("no answer within {REQUEST_TIMEOUT:?}")));
                }
                None => {}
            }
        }
        let next = batch.next;
        self.give_back(reader, (!at_end).then(|| (tp.clone(), next)));
        Ok(batch)
    }
}

/// A client's configuration: Strom's `defaults`, then the app's librdkafka
/// properties over them.
fn client_config(
    servers: &str,
    client_id: &str,
    defaults: &[(&str, &str)],
    properties: &BTreeMap<String, String>,
) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", servers).set("client.id", client_id);
    for (k, v) in defaults {
        c.set(*k, *v);
    }
    for (k, v) in properties {
        c.set(k, v);
    }
    c.set_log_level(log_level(properties));
    c
}

/// librdkafka's warnings and errors; everything when its `debug` property
/// (`STROM_KAFKA_DEBUG`) asks for debug contexts.
fn log_level(properties: &BTreeMap<String, String>) -> RDKafkaLogLevel {
    if properties.contains_key("debug") { RDKafkaLogLevel::Debug } else { RDKafkaLogLevel::Warning }
}

/// Runs blocking librdkafka calls off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Transport { transport: "kafka", reason: format!("blocking task: {e}") })?
}

#[async_trait]
impl Transport for KafkaTransport {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    async fn ensure_topics(&self, specs: &[TopicSpec]) -> Result<()> {
        if specs.is_empty() {
            return Ok(());
        }
        let existing = self.partition_counts(specs.iter().map(|s| s.name.clone()).collect()).await?;
        let mut missing = Vec::new();
        for spec in specs {
            match existing.get(&spec.name) {
                Some(&n) if n != spec.partitions => {
                    return Err(Error::Topic {
                        topic: spec.name.clone(),
                        reason: format!("exists with {n} partitions, declared with {}", spec.partitions),
                    });
                }
                Some(_) => {}
                None => missing.push(spec),
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let new_topics: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|spec| {
                spec.config.iter().fold(
                    NewTopic::new(&spec.name, spec.partitions, TopicReplication::Fixed(i32::from(spec.replication))),
                    |t, (k, v)| t.set(k, v),
                )
            })
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
        let results =
            self.admin.create_topics(&new_topics, &opts).await.map_err(|e| kafka_err("creating topics", e))?;
        for result in results {
            match result {
                Ok(name) => tracing::info!(topic = %name, "created topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(Error::Topic { topic: name, reason: format!("cannot be created: {code}") });
                }
            }
        }
        // Creation is asynchronous on the broker: wait until metadata shows it.
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let names: Vec<String> = missing.iter().map(|s| s.name.clone()).collect();
        loop {
            // Every partition visible: a consumer that subscribes while a new
            // topic shows only some of its partitions would be assigned only
            // those until its next metadata refresh (minutes).
            let counts = self.partition_counts(names.clone()).await?;
            if missing.iter().all(|s| counts.get(&s.name) == Some(&s.partitions)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Topic { topic: names.join(", "), reason: "created but not visible in time".into() });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn partitions(&self, topic: &str) -> Result<Option<i32>> {
        Ok(self.partition_counts(vec![topic.to_owned()]).await?.get(topic).copied())
    }

    fn producer(&self) -> Arc<dyn Producer> {
        self.producer.clone()
    }

    fn consumer(&self, group: &str, topics: &[String]) -> Result<ConsumerHandle> {
        let (tx, rx) = mpsc::channel(8);
        let ctx = ConsumerCtx {
            tx: Mutex::new(Some(tx)),
            batch: Mutex::new(Vec::with_capacity(BATCH)),
            closing: AtomicBool::new(false),
            revoke_timeout: self.revoke_timeout,
            ends: Mutex::default(),
        };
        let consumer: BaseConsumer<ConsumerCtx> = self
            .consumer_config(group)
            .create_with_context(ctx)
            .map_err(|e| Error::Config(format!("Kafka consumer: {e}")))?;
        let consumer = Arc::new(consumer);
        let control = Arc::new(KafkaConsumer { consumer: Arc::downgrade(&consumer), ctx: consumer.context().clone() });
        if !topics.is_empty() {
            control.subscribe(topics)?;
        }
        std::thread::Builder::new()
            .name(format!("strom-consumer-{group}"))
            .spawn(move || poll_loop(consumer))
            .map_err(|e| Error::Io { context: "starting the consumer thread".into(), source: e })?;
        Ok(ConsumerHandle { events: rx, control })
    }

    async fn committed(&self, group: &str, tp: &TopicPartition) -> Result<Option<i64>> {
        let consumer: BaseConsumer =
            self.consumer_config(group).create().map_err(|e| Error::Config(format!("Kafka consumer: {e}")))?;
        let tp = tp.clone();
        blocking(move || {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&tp.topic, tp.partition);
            let got =
                consumer.committed_offsets(tpl, REQUEST_TIMEOUT).map_err(|e| kafka_err("committed offsets", e))?;
            Ok(got.find_partition(&tp.topic, tp.partition).and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            }))
        })
        .await
    }

    async fn read(&self, tp: &TopicPartition, from: i64, max: usize) -> Result<ReadBatch> {
        let readers = self.readers.clone();
        let tp = tp.clone();
        blocking(move || readers.read(&tp, from, max)).await
    }
}

// ---- producer ----

struct ProducerCtx {
    sends: Arc<SendTracker>,
}

impl ClientContext for ProducerCtx {}

impl ProducerContext for ProducerCtx {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: usize) {
        match result {
            Ok(_) => self.sends.ack(seq as u64),
            Err((e, m)) => self.sends.fail(seq as u64, format!("{e} (topic {})", m.topic())),
        }
    }
}

struct KafkaProducer {
    producer: ThreadedProducer<ProducerCtx>,
}

#[async_trait]
impl Producer for KafkaProducer {
    fn try_send(&self, msg: OutMessage, seq: u64) -> Result<(), TrySendError> {
        let mut record = BaseRecord::<[u8], [u8], usize>::with_opaque_to(&msg.topic, seq as usize);
        if let Some(value) = &msg.value {
            record = record.payload(value);
        }
        if let Some(key) = &msg.key {
            record = record.key(key);
        }
        if let Some(partition) = msg.partition {
            record = record.partition(partition);
        }
        if let Some(ts) = msg.timestamp_ms {
            record = record.timestamp(ts);
        }
        if !msg.headers.is_empty() {
            let headers = msg.headers.iter().fold(OwnedHeaders::new_with_capacity(msg.headers.len()), |h, (k, v)| {
                h.insert(Header { key: k, value: Some(&v[..]) })
            });
            record = record.headers(headers);
        }
        match self.producer.send(record) {
            Ok(()) => Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                Err(TrySendError::QueueFull(Box::new(msg)))
            }
            Err((e, _)) => {
                Err(TrySendError::Fatal(Error::Send { topic: msg.topic.to_string(), reason: e.to_string() }))
            }
        }
    }

    async fn flush(&self, timeout: Duration) -> Result<()> {
        let producer = self.producer.clone();
        blocking(move || producer.flush(timeout).map_err(|e| kafka_err("flushing the producer", e))).await
    }
}

// ---- consumer ----

struct ConsumerCtx {
    /// To the worker; dropped when the consumer has left the group, which
    /// closes the channel.
    tx: Mutex<Option<mpsc::Sender<ConsumerEvent>>>,
    /// Messages polled and not yet handed over; flushed before a rebalance
    /// event so the worker sees them in order.
    batch: Mutex<Vec<RawMessage>>,
    closing: AtomicBool,
    revoke_timeout: Duration,
    /// High watermarks from the statistics, for the lag metric.
    ends: Mutex<HashMap<(String, i32), i64>>,
}

impl ConsumerCtx {
    /// Hands an event to the worker, waiting while its channel is full.
    /// Returns false when the worker is gone.
    fn send(&self, event: ConsumerEvent) -> bool {
        let tx = lock(&self.tx).clone();
        tx.is_some_and(|tx| tx.blocking_send(event).is_ok())
    }

    fn flush(&self) -> bool {
        let batch = std::mem::take(&mut *lock(&self.batch));
        batch.is_empty() || self.send(ConsumerEvent::Messages(batch))
    }
}

/// The reader's context: reaching a partition's end is how a read ends, not
/// an error to log.
struct ReaderCtx;

impl ClientContext for ReaderCtx {
    fn error(&self, error: KafkaError, reason: &str) {
        // librdkafka reports an end reached outside a poll as a global error.
        let eof = matches!(error, KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF));
        if !eof {
            tracing::error!(%error, reason, "librdkafka error (reader)");
        }
    }
}

impl ConsumerContext for ReaderCtx {}

fn tps(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements().iter().map(|e| TopicPartition { topic: e.topic().into(), partition: e.partition() }).collect()
}

impl ClientContext for ConsumerCtx {
    fn stats(&self, statistics: Statistics) {
        let mut ends = lock(&self.ends);
        for (name, topic) in statistics.topics {
            for (partition, p) in topic.partitions {
                if partition >= 0 && p.hi_offset >= 0 {
                    ends.insert((name.clone(), partition), p.hi_offset);
                }
            }
        }
    }
}

impl ConsumerContext for ConsumerCtx {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                if self.closing.load(Ordering::Acquire) || !self.flush() {
                    return;
                }
                let (done, mut answer) = oneshot::channel();
                if !self.send(ConsumerEvent::Revoked(tps(tpl), done)) {
                    return;
                }
                // The worker drains and commits; librdkafka lets the
                // partitions go when this returns.
                let deadline = Instant::now() + self.revoke_timeout;
                while let Err(oneshot::error::TryRecvError::Empty) = answer.try_recv() {
                    if Instant::now() >= deadline {
                        tracing::warn!("the worker did not finish the revoked partitions in time");
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance
            && !self.closing.load(Ordering::Acquire)
            && self.flush()
        {
            self.send(ConsumerEvent::Assigned(tps(tpl)));
        }
    }
}

/// Copies a message out of librdkafka's buffer. Topic names are interned so
/// that the messages of one topic share one `Arc<str>`.
fn raw_message(m: &BorrowedMessage<'_>, topics: &mut HashMap<String, Arc<str>>) -> RawMessage {
    let topic = match topics.get(m.topic()) {
        Some(t) => t.clone(),
        None => {
            let t: Arc<str> = m.topic().into();
            topics.insert(m.topic().to_owned(), t.clone());
            t
        }
    };
    let headers = m
        .headers()
        .map(|hs| {
            hs.iter().map(|h| (h.key.to_owned(), h.value.map(Bytes::copy_from_slice).unwrap_or_default())).collect()
        })
        .unwrap_or_default();
    RawMessage {
        topic,
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(Bytes::copy_from_slice),
        value: m.payload().map(Bytes::copy_from_slice),
        headers,
        timestamp_ms: m.timestamp().to_millis(),
    }
}

/// The consumer thread: polls (which also runs the rebalance callbacks),
/// batches messages and hands them to the worker, until closed; then leaves
/// the group. It holds the only strong reference to the consumer, so the
/// consumer is closed here, on the thread that polls it.
fn poll_loop(consumer: Arc<BaseConsumer<ConsumerCtx>>) {
    let ctx = consumer.context().clone();
    let mut topics = HashMap::new();
    let mut attached = true;
    while !ctx.closing.load(Ordering::Acquire) {
        let mut next = consumer.poll(Duration::from_millis(100));
        loop {
            match next {
                None => break,
                Some(Ok(m)) => {
                    let raw = raw_message(&m, &mut topics);
                    let mut batch = lock(&ctx.batch);
                    batch.push(raw);
                    if batch.len() >= BATCH {
                        break;
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error");
                    if let KafkaError::MessageConsumption(code) = &e
                        && is_fatal(*code)
                    {
                        ctx.send(ConsumerEvent::Failed(kafka_err("consumer", &e)));
                        attached = false;
                    }
                }
            }
            next = consumer.poll(Duration::ZERO);
        }
        if attached && !ctx.flush() {
            // The worker is gone: nothing more to hand over.
            attached = false;
        }
        if !attached {
            lock(&ctx.batch).clear();
        }
    }
    lock(&ctx.batch).clear();
    // Dropping the consumer leaves the group (librdkafka's close, polled
    // until done); the revoke callback sees `closing` and lets go at once.
    drop(consumer);
    lock(&ctx.tx).take();
}

fn is_fatal(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Fatal
            | RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::GroupAuthorizationFailed
            | RDKafkaErrorCode::SaslAuthenticationFailed
    )
}

struct KafkaConsumer {
    /// Owned by the consumer thread; gone once it has left the group.
    consumer: std::sync::Weak<BaseConsumer<ConsumerCtx>>,
    ctx: Arc<ConsumerCtx>,
}

impl KafkaConsumer {
    fn consumer(&self) -> Result<Arc<BaseConsumer<ConsumerCtx>>> {
        self.consumer.upgrade().ok_or_else(|| kafka_err("consumer", "closed"))
    }
}

fn tpl_of(partitions: &[TopicPartition]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::with_capacity(partitions.len());
    for tp in partitions {
        tpl.add_partition(&tp.topic, tp.partition);
    }
    tpl
}

impl ConsumerControl for KafkaConsumer {
    fn commit(&self, offsets: &[(TopicPartition, i64)]) -> Result<()> {
        let mut tpl = TopicPartitionList::with_capacity(offsets.len());
        for (tp, offset) in offsets {
            tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*offset))
                .map_err(|e| kafka_err("commit", e))?;
        }
        self.consumer()?.commit(&tpl, CommitMode::Sync).map_err(|e| kafka_err("commit", e))
    }

    fn pause(&self, partitions: &[TopicPartition]) {
        if let Err(e) = self.consumer().and_then(|c| c.pause(&tpl_of(partitions)).map_err(|e| kafka_err("pause", e))) {
            tracing::warn!(error = %e, "pausing partitions");
        }
    }

    fn resume(&self, partitions: &[TopicPartition]) {
        if let Err(e) = self.consumer().and_then(|c| c.resume(&tpl_of(partitions)).map_err(|e| kafka_err("resume", e)))
        {
            tracing::warn!(error = %e, "resuming partitions");
        }
    }

    fn subscribe(&self, topics: &[String]) -> Result<()> {
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        self.consumer()?.subscribe(&names).map_err(|e| kafka_err("subscribing", e))
    }

    fn end_offset(&self, tp: &TopicPartition) -> Option<i64> {
        lock(&self.ctx.ends).get(&(tp.topic.to_string(), tp.partition)).copied()
    }

    fn close(&self) {
        self.ctx.closing.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use crate::App;

    #[test]
    fn librdkafka_properties_come_from_the_configuration() {
        // Clients connect lazily: building needs no broker, but librdkafka
        // checks every property.
        let app = App::builder("props").broker("kafka://127.0.0.1:1").kafka("session.timeout.ms", "6000").build();
        assert!(app.is_ok(), "{:?}", app.err());
        let err = App::builder("props").broker("kafka://127.0.0.1:1").kafka("no.such.property", "1").build();
        let err = err.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("No such configuration property: \"no.such.property\""), "{err}");
        let err = App::builder("props").broker("kafka://").build().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("kafka:// needs at least one host:port"), "{err}");
    }
}
