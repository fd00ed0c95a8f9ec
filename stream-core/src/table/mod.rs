//! Tables: partitioned key/value state that agents read and update, kept in a
//! store on the worker and in a changelog topic on the broker.
//!
//! A [`Table`] is co-partitioned with the topic whose events update it: its
//! partition `p` lives on the worker that is assigned partition `p` of that
//! topic, so the events of a key and the key's state are always in one place.
//! Every change is written to the store *and* produced to the compacted
//! changelog topic `<app id>-<table>-changelog`; the event that made the change
//! is committed only once its changelog write is acknowledged (the same rule as
//! for anything an agent sends).
//!
//! On assignment a partition recovers before any of its events is handed to an
//! agent: the store remembers the last changelog offset it applied, and only
//! the changelog after it is replayed.
//!
//! ```
//! use stream_core::prelude::*;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let app = App::builder("shop").broker("memory://").state_dir(dir.path()).build()?;
//! let orders = app.topic::<String, f64>("orders").partitions(4);
//! let totals = app.table::<String, f64>("totals", &orders);
//!
//! let table = totals.clone();
//! app.agent("sum", &orders, move |mut orders| {
//!     let totals = table.clone();
//!     async move {
//!         while let Some(order) = orders.next().await {
//!             let Some(customer) = order.key() else { continue };
//!             totals.at(&order)?.update(customer, |total| total.unwrap_or(0.0) + order.value()).await?;
//!         }
//!         Ok(())
//!     }
//! });
//! # let worker = app.start().await?;
//! # worker.stop().await?;
//! # Ok(()) }
//! ```

pub(crate) mod changelog;
pub mod store;
pub mod window;

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;

use crate::app::AppCore;
use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::record::Payload;
use crate::topic::produce;
use crate::tracking::lock;
use crate::transport::{OutMessage, TopicSpec, partition_for_key};
use store::{PartitionStore, Write};

/// A partitioned key/value table; see the [module docs](self).
///
/// Made by [`App::table`](crate::App::table); cheap to clone.
pub struct Table<K, V> {
    inner: Arc<TableCore>,
    key_codec: Arc<dyn Codec<K>>,
    value_codec: Arc<dyn Codec<V>>,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Clone for Table<K, V> {
    fn clone(&self) -> Self {
        Table {
            inner: self.inner.clone(),
            key_codec: self.key_codec.clone(),
            value_codec: self.value_codec.clone(),
            _types: PhantomData,
        }
    }
}

impl<K, V> std::fmt::Debug for Table<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table").field("name", &self.inner.name).finish_non_exhaustive()
    }
}

/// Counters of one table, also exported as metrics.
#[derive(Debug, Default)]
pub struct TableStats {
    /// Changes written (each also produced to the changelog).
    pub writes: AtomicU64,
    /// Changelog records replayed into the store by recoveries.
    pub replayed: AtomicU64,
    /// Partition recoveries finished.
    pub recoveries: AtomicU64,
    /// Partitions rebuilt from the whole changelog because their store was
    /// missing, corrupt or inconsistent.
    pub rebuilt: AtomicU64,
    /// Time spent recovering, in nanoseconds (wall time: partitions that
    /// recover together count once).
    pub recovery_ns: AtomicU64,
    /// Partitions this worker serves now.
    pub partitions: AtomicI64,
    /// Partitions recovering now.
    pub recovering: AtomicI64,
    /// Events too late for any open window (windowed tables).
    pub late_events: AtomicU64,
    /// Windows closed (windowed tables).
    pub windows_closed: AtomicU64,
    /// Changelog records applied to standby partitions (and so not replayed
    /// when this worker takes them over).
    pub standby_applied: AtomicU64,
    /// Versions a global table with a keep rule ([`GlobalTable::keep_if`])
    /// read and did not keep: older than the version it holds.
    pub not_kept: AtomicU64,
}

/// Which of two encoded versions of a key a global table keeps: `true` keeps
/// the incoming one (first argument) over the stored one.
pub(crate) type Keep = Arc<dyn Fn(&Bytes, &Bytes) -> bool + Send + Sync>;

/// How many applied changes a subscriber of [`GlobalTable::changes`] may
/// fall behind before it misses some.
const CHANGES_BUFFER: usize = 4096;

/// What the app knows of a declared table, whatever its types.
pub(crate) struct TableCore {
    pub(crate) name: String,
    /// The changelog topic (with the app's topic prefix).
    pub(crate) changelog: Arc<str>,
    /// The topic the table is co-partitioned with.
    pub(crate) source: Arc<str>,
    /// Partitions asked for with [`Table::partitions`], checked at start.
    declared: Mutex<Option<i32>>,
    /// Standby replicas asked for (0: none).
    standby_replicas: std::sync::atomic::AtomicUsize,
    /// A global table: every worker holds every partition, following the
    /// changelog; the source is the changelog itself.
    pub(crate) global: bool,
    /// The changelog is a topic the app declares itself (a global table read
    /// from a topic): the table neither creates nor compacts it.
    pub(crate) external: bool,
    /// A global table's rule for which version of a key it keeps (none: the
    /// last one read).
    pub(crate) keep: Mutex<Option<Keep>>,
    /// The changes a global table applies, for [`GlobalTable::changes`].
    pub(crate) changes: tokio::sync::broadcast::Sender<Write>,
    /// The partition count, known once the worker starts.
    partitions: AtomicI32,
    pub(crate) core: Arc<AppCore>,
    /// The partitions this worker serves, recovered.
    parts: RwLock<HashMap<i32, Arc<TablePart>>>,
    pub(crate) stats: Arc<TableStats>,
    /// One checkpoint at a time.
    checkpointing: tokio::sync::Mutex<()>,
    /// For windowed tables with an idle timeout: the timeout, and what closes
    /// the windows of idle partitions.
    pub(crate) idle: Mutex<Option<(std::time::Duration, window::IdleCloser)>>,
}

impl TableCore {
    /// The partition count: the declared one, else the source topic's.
    pub(crate) fn partition_count(&self) -> i32 {
        let source = lock(&self.core.topics).get(&*self.source).map(|t| t.spec.partitions);
        lock(&self.declared).or(source).unwrap_or(self.core.config.default_partitions)
    }

    /// The changelog topic's spec.
    pub(crate) fn changelog_spec(&self) -> TopicSpec {
        let mut config = std::collections::BTreeMap::new();
        config.insert("cleanup.policy".to_owned(), "compact".to_owned());
        TopicSpec {
            name: self.changelog.to_string(),
            partitions: self.partition_count(),
            replication: self.core.config.replication,
            config,
        }
    }

    pub(crate) fn standby_replicas(&self) -> usize {
        self.standby_replicas.load(Ordering::Relaxed)
    }

    /// Checks the table against its topic, before the worker starts.
    pub(crate) fn check(&self) -> Result<()> {
        if self.global {
            let n = self.partition_count();
            self.partitions.store(n, Ordering::Release);
            return Ok(());
        }
        let topic = lock(&self.core.topics).get(&*self.source).map(|t| t.spec.partitions);
        let Some(topic) = topic else {
            return Err(self.error(format!("its topic {} is not declared by this app", self.source)));
        };
        if let Some(declared) = *lock(&self.declared)
            && declared != topic
        {
            return Err(self.error(format!(
                "declared with {declared} partitions, but its topic {} has {topic}: a table must have as many \
                 partitions as the topic whose events update it",
                self.source
            )));
        }
        self.partitions.store(topic, Ordering::Release);
        Ok(())
    }

    pub(crate) fn error(&self, reason: impl Into<String>) -> Error {
        Error::Table { table: self.name.clone(), reason: reason.into() }
    }

    fn part(&self, partition: i32) -> Result<Arc<TablePart>> {
        let parts = self.parts.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        parts.get(&partition).cloned().ok_or_else(|| {
            self.error(format!(
                "partition {partition} is not served by this worker (not assigned to it, or still recovering)"
            ))
        })
    }

    pub(crate) fn served(&self) -> Vec<Arc<TablePart>> {
        let parts = self.parts.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out: Vec<_> = parts.values().cloned().collect();
        out.sort_by_key(|p| p.partition);
        out
    }

    pub(crate) fn insert_part(&self, part: Arc<TablePart>) {
        let mut parts = self.parts.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        parts.insert(part.partition, part);
        self.stats.partitions.store(parts.len() as i64, Ordering::Relaxed);
    }

    pub(crate) fn remove_part(&self, partition: i32) -> Option<Arc<TablePart>> {
        let mut parts = self.parts.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let part = parts.remove(&partition);
        self.stats.partitions.store(parts.len() as i64, Ordering::Relaxed);
        part
    }
}

/// One partition of a table on this worker: its store, and the changes not
/// yet checkpointed into it.
pub(crate) struct TablePart {
    pub(crate) partition: i32,
    pub(crate) store: Arc<dyn PartitionStore>,
    pending: Mutex<Pending>,
    /// One writer at a time, so the changelog holds the changes of a key in
    /// the order they were made.
    writing: tokio::sync::Mutex<()>,
    /// Windowed tables: the watermark and open windows.
    windows: Mutex<Option<window::WindowState>>,
}

/// Changes made since the last checkpoint. Reads look here before the store.
#[derive(Default)]
struct Pending {
    /// Changes not yet being checkpointed.
    dirty: HashMap<Bytes, Option<Bytes>>,
    /// Changes a running checkpoint is writing to the store.
    flushing: HashMap<Bytes, Option<Bytes>>,
    /// The changelog offset the next change will get.
    next_offset: i64,
}

impl TablePart {
    pub(crate) fn new(partition: i32, store: Arc<dyn PartitionStore>, next_offset: i64) -> Self {
        TablePart {
            partition,
            store,
            pending: Mutex::new(Pending { next_offset, ..Pending::default() }),
            writing: tokio::sync::Mutex::new(()),
            windows: Mutex::new(None),
        }
    }

    /// The changelog offset the next change gets (for a global table: the
    /// offset its follower reads next).
    pub(crate) fn next_offset(&self) -> i64 {
        lock(&self.pending).next_offset
    }

    pub(crate) fn set_next_offset(&self, next: i64) {
        lock(&self.pending).next_offset = next;
    }

    fn read(&self, key: &[u8]) -> Result<Option<Bytes>> {
        {
            let p = lock(&self.pending);
            if let Some(v) = p.dirty.get(key).or_else(|| p.flushing.get(key)) {
                return Ok(v.clone());
            }
        }
        self.store.get(key)
    }

    /// Produces a change to the changelog, then makes it visible.
    async fn write(&self, table: &TableCore, key: Bytes, value: Option<Bytes>) -> Result<()> {
        let msg = OutMessage {
            topic: table.changelog.clone(),
            partition: Some(self.partition),
            key: Some(key.clone()),
            value: value.clone(),
            headers: Vec::new(),
            timestamp_ms: None,
        };
        produce(&table.core, msg).await?;
        let mut p = lock(&self.pending);
        p.dirty.insert(key, value);
        p.next_offset += 1;
        table.stats.writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Every key and value: the store's, with the pending changes over them.
    fn entries(&self) -> Result<Vec<(Bytes, Bytes)>> {
        let (dirty, flushing) = {
            let p = lock(&self.pending);
            (p.dirty.clone(), p.flushing.clone())
        };
        let mut all: std::collections::BTreeMap<Bytes, Bytes> = self.store.entries()?.into_iter().collect();
        for (k, v) in flushing.into_iter().chain(dirty) {
            match v {
                Some(v) => all.insert(k, v),
                None => all.remove(&k),
            };
        }
        Ok(all.into_iter().collect())
    }

    /// Takes the pending changes for a checkpoint: the writes, the changelog
    /// offset they reach, and how many sends must be acknowledged first.
    fn begin_checkpoint(&self, sends_issued: u64) -> Option<(Vec<Write>, i64, u64)> {
        let mut p = lock(&self.pending);
        if p.dirty.is_empty() && p.flushing.is_empty() {
            return None;
        }
        let dirty = std::mem::take(&mut p.dirty);
        p.flushing.extend(dirty);
        let writes = p.flushing.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        Some((writes, p.next_offset - 1, sends_issued))
    }

    fn end_checkpoint(&self) {
        lock(&self.pending).flushing.clear();
    }
}

/// A handle on a partition of a table, for reads and writes from an agent.
///
/// Made by [`Table::at`] (the partition of the event being handled) or
/// [`Table::partition`].
pub struct TablePartition<'t, K, V> {
    table: &'t Table<K, V>,
    part: Arc<TablePart>,
}

impl<K, V> std::fmt::Debug for TablePartition<'_, K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TablePartition")
            .field("table", &self.table.inner.name)
            .field("partition", &self.part.partition)
            .finish()
    }
}

impl<K: Payload, V: Payload> Table<K, V> {
    pub(crate) fn declare(core: &Arc<AppCore>, name: &str, source: Option<Arc<str>>) -> Self {
        let changelog: Arc<str> = Arc::from(core.config.topic_name(&format!("{}-{name}-changelog", core.config.id)));
        let global = source.is_none();
        let source = source.unwrap_or_else(|| changelog.clone());
        Self::declare_core(core, name, changelog, source, global, false)
    }

    /// A global table whose changelog is `topic`, a topic the app declares.
    pub(crate) fn declare_over(core: &Arc<AppCore>, name: &str, topic: Arc<str>) -> Self {
        Self::declare_core(core, name, topic.clone(), topic, true, true)
    }

    fn declare_core(
        core: &Arc<AppCore>,
        name: &str,
        changelog: Arc<str>,
        source: Arc<str>,
        global: bool,
        external: bool,
    ) -> Self {
        let stats = Arc::new(TableStats::default());
        core.metrics.add_table(name, stats.clone());
        let inner = Arc::new(TableCore {
            name: name.to_owned(),
            changelog,
            source,
            declared: Mutex::new(None),
            standby_replicas: Default::default(),
            global,
            external,
            keep: Mutex::new(None),
            changes: tokio::sync::broadcast::channel(CHANGES_BUFFER).0,
            partitions: AtomicI32::new(0),
            core: core.clone(),
            parts: RwLock::default(),
            stats,
            checkpointing: tokio::sync::Mutex::new(()),
            idle: Mutex::new(None),
        });
        lock(&core.tables).push(inner.clone());
        Table {
            inner,
            key_codec: Arc::new(K::Codec::default()),
            value_codec: Arc::new(V::Codec::default()),
            _types: PhantomData,
        }
    }

    /// Asks for `n` partitions. A table has as many partitions as its topic;
    /// a different count is an error when the worker starts.
    pub fn partitions(self, n: i32) -> Self {
        *lock(&self.inner.declared) = Some(n);
        self
    }

    /// Keeps warm copies of partitions other workers own, following their
    /// changelogs, so taking one over (when its owner stops or fails) replays
    /// only the changelog written since the copy last caught up. With `n > 0`
    /// every worker follows every partition of the table it does not own.
    pub fn standby_replicas(self, n: usize) -> Self {
        self.inner.standby_replicas.store(n, Ordering::Relaxed);
        self
    }

    /// Uses another codec for keys.
    pub fn with_key_codec(mut self, codec: impl Codec<K>) -> Self {
        self.key_codec = Arc::new(codec);
        self
    }

    /// Uses another codec for values.
    pub fn with_value_codec(mut self, codec: impl Codec<V>) -> Self {
        self.value_codec = Arc::new(codec);
        self
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The changelog topic.
    pub fn changelog_topic(&self) -> &str {
        &self.inner.changelog
    }

    /// The counters of this table.
    pub fn stats(&self) -> &TableStats {
        &self.inner.stats
    }

    /// The partition of the event being handled: the table is co-partitioned
    /// with the event's topic, so the event's partition is the key's.
    ///
    /// Fails when the event comes from a topic with another partition count,
    /// or when this worker does not serve the partition.
    pub fn at<EK, EV>(&self, event: &Event<EK, EV>) -> Result<TablePartition<'_, K, V>> {
        let partitions = self.inner.partitions.load(Ordering::Acquire);
        if event.topic() != &*self.inner.source {
            let theirs = lock(&self.inner.core.topics).get(event.topic()).map(|t| t.spec.partitions);
            if theirs.is_some_and(|n| n != partitions) {
                return Err(self.inner.error(format!(
                    "an event of topic {} ({} partitions) cannot address a table of {partitions} partitions",
                    event.topic(),
                    theirs.unwrap_or_default(),
                )));
            }
        }
        self.partition(event.partition())
    }

    /// A partition this worker serves.
    pub fn partition(&self, partition: i32) -> Result<TablePartition<'_, K, V>> {
        Ok(TablePartition { table: self, part: self.inner.part(partition)? })
    }

    /// The value of `key`, from the partition its encoded key hashes to (the
    /// default partitioner's choice), when this worker serves it. Inside an
    /// agent prefer [`at`](Self::at).
    pub fn get(&self, key: &K) -> Result<Option<V>> {
        let k = self.encode_key(key)?;
        let partition = partition_for_key(&k, self.inner.partitions.load(Ordering::Acquire).max(1));
        let part = self.inner.part(partition)?;
        part.read(&k)?.map(|v| self.decode_value(&v)).transpose()
    }

    /// Every key and value of the partitions this worker serves, by partition
    /// then key bytes.
    pub fn local_entries(&self) -> Result<Vec<(K, V)>> {
        let mut out = Vec::new();
        for part in self.inner.served() {
            for (k, v) in part.entries()? {
                out.push((self.decode_key(&k)?, self.decode_value(&v)?));
            }
        }
        Ok(out)
    }

    /// The partitions this worker serves.
    pub fn local_partitions(&self) -> Vec<i32> {
        self.inner.served().iter().map(|p| p.partition).collect()
    }

    fn encode_key(&self, key: &K) -> Result<Bytes> {
        self.key_codec.encode_bytes(key).map_err(|source| Error::Encode {
            topic: self.inner.changelog.to_string(),
            part: "key",
            source,
        })
    }

    fn encode_value(&self, value: &V) -> Result<Bytes> {
        self.value_codec.encode_bytes(value).map_err(|source| Error::Encode {
            topic: self.inner.changelog.to_string(),
            part: "value",
            source,
        })
    }

    fn decode_key(&self, bytes: &Bytes) -> Result<K> {
        self.key_codec.decode_bytes(bytes).map_err(|e| self.inner.error(format!("a stored key does not decode: {e}")))
    }

    fn decode_value(&self, bytes: &Bytes) -> Result<V> {
        self.value_codec
            .decode_bytes(bytes)
            .map_err(|e| self.inner.error(format!("a stored value does not decode: {e}")))
    }
}

/// A table every worker holds whole, kept current from its changelog: for
/// reference data every event may need (a sensor registry, exchange rates),
/// whatever partition the event came from.
///
/// Writes go to the changelog; every worker (the writer too) applies them
/// when it reads them back, a fraction of a second later. Before its agents
/// start, a worker reads every partition of the changelog to its end.
///
/// ```
/// # use stream_core::prelude::*;
/// # async fn doc(app: App) -> Result<(), stream_core::Error> {
/// let sensors = app.global_table::<String, String>("sensor-names");
/// sensors.insert(&"s1".to_string(), &"boiler room".to_string()).await?;
/// // later, in any agent on any worker:
/// let name = sensors.get(&"s1".to_string())?;
/// # let _ = name; Ok(()) }
/// ```
pub struct GlobalTable<K, V> {
    table: Table<K, V>,
}

impl<K, V> Clone for GlobalTable<K, V> {
    fn clone(&self) -> Self {
        GlobalTable { table: self.table.clone() }
    }
}

impl<K, V> std::fmt::Debug for GlobalTable<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlobalTable").field("name", &self.table.inner.name).finish_non_exhaustive()
    }
}

impl<K: Payload, V: Payload> GlobalTable<K, V> {
    pub(crate) fn declare(core: &Arc<AppCore>, name: &str) -> Self {
        GlobalTable { table: Table::declare(core, name, None) }
    }

    pub(crate) fn declare_over(core: &Arc<AppCore>, name: &str, topic: Arc<str>) -> Self {
        GlobalTable { table: Table::declare_over(core, name, topic) }
    }

    /// Which of two versions of a key the table keeps: `keep(incoming,
    /// stored)` is called for each version read while the table holds
    /// another, and the incoming one replaces the stored one only when it
    /// returns `true` (without a rule, the last version read wins). For data
    /// whose versions can arrive out of order, such as revisions carrying
    /// their own revision time:
    ///
    /// ```
    /// # use stream_core::prelude::*;
    /// # #[derive(serde::Serialize, serde::Deserialize, Clone)] struct Revision { updated_ms: i64 }
    /// # impl stream_core::Payload for Revision { type Codec = stream_core::codec::Json; }
    /// # fn doc(app: App) {
    /// let events = app.topic::<String, Revision>("events");
    /// let latest = app
    ///     .global_table_from("latest", &events)
    ///     .keep_if(|incoming: &Revision, stored: &Revision| incoming.updated_ms > stored.updated_ms);
    /// # let _ = latest; }
    /// ```
    ///
    /// A version that does not decode is not kept (it is logged); a stored
    /// one that does not decode is replaced. Versions not kept are counted in
    /// [`TableStats::not_kept`].
    pub fn keep_if(self, keep: impl Fn(&V, &V) -> bool + Send + Sync + 'static) -> Self {
        let table = self.table.clone();
        let rule: Keep = Arc::new(move |incoming: &Bytes, stored: &Bytes| {
            let incoming = match table.decode_value(incoming) {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(table = %table.inner.name, error = %e, "a version that does not decode is not kept");
                    return false;
                }
            };
            match table.decode_value(stored) {
                Ok(stored) => keep(&incoming, &stored),
                Err(_) => true,
            }
        });
        *lock(&self.table.inner.keep) = Some(rule);
        self
    }

    /// The changes this worker applies to the table from now on, in the
    /// order it applies them (per partition), each once it is applied:
    /// what a live view (a web page's event stream, a cache) follows after
    /// reading [`entries`](Self::entries).
    pub fn changes(&self) -> Changes<K, V> {
        Changes { rx: self.table.inner.changes.subscribe(), table: self.table.clone() }
    }

    /// Creates the changelog with `n` partitions (the app's default otherwise).
    pub fn partitions(self, n: i32) -> Self {
        GlobalTable { table: self.table.partitions(n) }
    }

    /// The value of `key`, as this worker last read it.
    pub fn get(&self, key: &K) -> Result<Option<V>> {
        self.table.get(key)
    }

    /// Every key and value.
    pub fn entries(&self) -> Result<Vec<(K, V)>> {
        self.table.local_entries()
    }

    /// Sets the value of `key` on every worker. Await the receipt to know the
    /// broker has it.
    pub async fn insert(&self, key: &K, value: &V) -> Result<crate::DeliveryReceipt> {
        let v = self.table.encode_value(value)?;
        self.send(key, Some(v)).await
    }

    /// Removes `key` on every worker.
    pub async fn remove(&self, key: &K) -> Result<crate::DeliveryReceipt> {
        self.send(key, None).await
    }

    async fn send(&self, key: &K, value: Option<Bytes>) -> Result<crate::DeliveryReceipt> {
        let k = self.table.encode_key(key)?;
        let partitions = self.table.inner.partition_count();
        let msg = OutMessage {
            topic: self.table.inner.changelog.clone(),
            partition: Some(partition_for_key(&k, partitions)),
            key: Some(k),
            value,
            headers: Vec::new(),
            timestamp_ms: None,
        };
        produce(&self.table.inner.core, msg).await
    }

    /// The underlying table (its name, changelog and counters).
    pub fn table(&self) -> &Table<K, V> {
        &self.table
    }
}

/// One change to a [`GlobalTable`], from [`Changes::next`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Change<K, V> {
    /// `key` now has this value.
    Set(K, V),
    /// `key` was removed.
    Removed(K),
    /// The subscriber fell this many changes behind and missed them: read
    /// the table's entries again to catch up.
    Missed(u64),
}

/// The changes a worker applies to a [`GlobalTable`]; see
/// [`GlobalTable::changes`].
pub struct Changes<K, V> {
    rx: tokio::sync::broadcast::Receiver<Write>,
    table: Table<K, V>,
}

impl<K, V> std::fmt::Debug for Changes<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changes").field("table", &self.table.inner.name).finish_non_exhaustive()
    }
}

impl<K: Payload, V: Payload> Changes<K, V> {
    /// The next change, waiting for one; `None` once the table is gone. A
    /// change that does not decode is skipped (and logged).
    pub async fn next(&mut self) -> Option<Change<K, V>> {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let (key, value) = match self.rx.recv().await {
                Ok(change) => change,
                Err(RecvError::Lagged(n)) => return Some(Change::Missed(n)),
                Err(RecvError::Closed) => return None,
            };
            let decoded = self.table.decode_key(&key).and_then(|k| match value {
                Some(v) => self.table.decode_value(&v).map(|v| Change::Set(k, v)),
                None => Ok(Change::Removed(k)),
            });
            match decoded {
                Ok(change) => return Some(change),
                Err(e) => {
                    tracing::warn!(table = %self.table.inner.name, error = %e, "a change that does not decode is skipped");
                }
            }
        }
    }
}

impl<K: Payload, V: Payload> TablePartition<'_, K, V> {
    /// The partition number.
    pub fn number(&self) -> i32 {
        self.part.partition
    }

    /// The value of `key`.
    pub fn get(&self, key: &K) -> Result<Option<V>> {
        let k = self.table.encode_key(key)?;
        self.part.read(&k)?.map(|v| self.table.decode_value(&v)).transpose()
    }

    /// Sets the value of `key`.
    pub async fn insert(&self, key: &K, value: &V) -> Result<()> {
        let k = self.table.encode_key(key)?;
        let v = self.table.encode_value(value)?;
        let _one = self.part.writing.lock().await;
        self.part.write(&self.table.inner, k, Some(v)).await
    }

    /// Reads, changes and writes the value of `key` in one step (no other
    /// change of this partition comes in between), and returns the new value.
    ///
    /// ```
    /// # async fn doc(counts: stream_core::Table<String, u64>, word: stream_core::Event<String, String>)
    /// #     -> Result<(), stream_core::Error> {
    /// let n = counts.at(&word)?.update(word.value(), |n| n.unwrap_or(0) + 1).await?;
    /// # let _ = n; Ok(()) }
    /// ```
    pub async fn update(&self, key: &K, f: impl FnOnce(Option<V>) -> V) -> Result<V> {
        let k = self.table.encode_key(key)?;
        let _one = self.part.writing.lock().await;
        let old = self.part.read(&k)?.map(|v| self.table.decode_value(&v)).transpose()?;
        let new = f(old);
        let v = self.table.encode_value(&new)?;
        self.part.write(&self.table.inner, k, Some(v)).await?;
        Ok(new)
    }

    /// Removes `key`, returning its value.
    pub async fn remove(&self, key: &K) -> Result<Option<V>> {
        let k = self.table.encode_key(key)?;
        let _one = self.part.writing.lock().await;
        let old = self.part.read(&k)?.map(|v| self.table.decode_value(&v)).transpose()?;
        if old.is_some() {
            self.part.write(&self.table.inner, k, None).await?;
        }
        Ok(old)
    }

    /// Every key and value of this partition, by key bytes.
    pub fn entries(&self) -> Result<Vec<(K, V)>> {
        self.part
            .entries()?
            .into_iter()
            .map(|(k, v)| Ok((self.table.decode_key(&k)?, self.table.decode_value(&v)?)))
            .collect()
    }
}
