//! Changelogs: how table partitions recover and how their stores catch up.
//!
//! Each partition of a table keeps its changes in two places: the compacted
//! changelog topic (written on every change, and acknowledged before the event
//! that made the change is committed) and the store on the worker. Changes go
//! to the store in *checkpoints*, after each commit: the changes made since the
//! last one are written together with the changelog offset they reach, once
//! the broker has acknowledged their changelog records. Until then reads find
//! them in memory. So the offset a store records is never ahead of what it
//! holds, and everything it holds is in the changelog.
//!
//! The offset a change gets in the changelog is known without asking the
//! broker: recovery reads the changelog partition to its end, and from there
//! the partition's owner is its only writer, one record per change.
//!
//! Recovery, on assignment and before any event of the partition is handed to
//! an agent: open the partition's store, read the offset it applied, replay
//! the changelog after it. A store without an offset, or with an offset that
//! cannot be read, is dropped and rebuilt from the whole changelog.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use std::collections::HashMap;

use super::store::{MemoryStore, PartitionStore, SledStore, Store, Write};
use super::{Keep, TableCore, TablePart};
use crate::app::{AppCore, TableStore};
use crate::error::{Error, Result};
use crate::tracking::lock;
use crate::transport::TopicPartition;

/// Changelog records read (and written to the store) at a time during recovery.
const RECOVERY_BATCH: usize = 50_000;

/// How long a checkpoint waits for the changelog records it covers to be
/// acknowledged before it gives up until the next one.
const CHECKPOINT_ACK_WAIT: Duration = Duration::from_secs(10);

/// The tables of a running worker and their store.
pub(crate) struct Tables {
    tables: Vec<Arc<TableCore>>,
    store: std::sync::Mutex<Option<Arc<dyn Store>>>,
    /// Standby partitions (by table index and partition): warm copies of
    /// partitions other workers own, following their changelogs. Locked by
    /// whoever writes a store partition outside its owner: the follower, and
    /// a recovery taking a standby over.
    standbys: tokio::sync::Mutex<HashMap<(usize, i32), Standby>>,
}

/// A warm copy of a partition this worker does not own.
struct Standby {
    store: Arc<dyn PartitionStore>,
    /// The changelog offset to read next.
    next: i64,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Io { context: "table store task".into(), source: std::io::Error::other(e.to_string()) })?
}

impl Tables {
    /// Checks the app's tables against their topics (before topics are created).
    pub(crate) fn check(core: &AppCore) -> Result<()> {
        lock(&core.tables).iter().try_for_each(|t| t.check())
    }

    /// Opens the tables' store (none without tables) and recovers the global
    /// tables (after topics are created).
    pub(crate) async fn open(core: &Arc<AppCore>) -> Result<Tables> {
        let tables: Vec<Arc<TableCore>> = lock(&core.tables).clone();
        let store: Option<Arc<dyn Store>> = match (tables.is_empty(), core.config.table_store) {
            (true, _) => None,
            (false, TableStore::Memory) => Some(Arc::new(MemoryStore::default())),
            (false, TableStore::Sled) => {
                let dir = core.config.state_dir.clone();
                let started = Instant::now();
                let store = blocking(move || SledStore::open(&dir)).await?;
                tracing::info!(path = %core.config.state_dir.display(), took_ms = started.elapsed().as_millis() as u64,
                    "table store opened");
                Some(Arc::new(store))
            }
        };
        let tables = Tables { tables, store: std::sync::Mutex::new(store), standbys: Default::default() };
        // Global tables are whole on every worker before any agent starts.
        for table in tables.tables.iter().filter(|t| t.global) {
            let started = Instant::now();
            for partition in 0..table.partition_count() {
                let part = recover(table, tables.store()?, partition).await?;
                table.insert_part(Arc::new(part));
            }
            table.stats.recovery_ns.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
        Ok(tables)
    }

    fn store(&self) -> Result<Arc<dyn Store>> {
        lock(&self.store).clone().ok_or(Error::ShuttingDown)
    }

    fn of_topic<'a>(&'a self, topic: &'a str) -> impl Iterator<Item = (usize, &'a Arc<TableCore>)> + 'a {
        self.tables.iter().enumerate().filter(move |(_, t)| !t.global && &*t.source == topic)
    }

    /// Recovers the table partitions of newly assigned topic partitions. A
    /// partition this worker kept a standby of replays only what the standby
    /// had not applied yet.
    pub(crate) async fn assigned(&self, tps: &[TopicPartition]) -> Result<()> {
        let mut standbys = self.standbys.lock().await;
        let mut recoveries = Vec::new();
        for tp in tps {
            for (index, table) in self.of_topic(&tp.topic) {
                if table.part(tp.partition).is_ok() {
                    continue;
                }
                if standbys.remove(&(index, tp.partition)).is_some() {
                    tracing::info!(table = %table.name, partition = tp.partition, "taking over a standby partition");
                }
                let store = self.store()?;
                recoveries.push(async move { recover(table, store, tp.partition).await.map(|part| (table, part)) });
            }
        }
        // Partitions recover side by side: their stores are apart.
        let started = Instant::now();
        let recovered = futures::future::try_join_all(recoveries).await?;
        let took = started.elapsed().as_nanos() as u64;
        let mut timed: Vec<&Arc<TableCore>> = Vec::new();
        for (table, part) in recovered {
            // The wall time of the round, once per table.
            if !timed.iter().any(|t| Arc::ptr_eq(t, table)) {
                timed.push(table);
                table.stats.recovery_ns.fetch_add(took, Ordering::Relaxed);
            }
            table.insert_part(Arc::new(part));
        }
        Ok(())
    }

    /// Brings global tables and standby partitions up to their changelogs'
    /// ends (called periodically); returns how many records it applied. A
    /// global table's partitions are read side by side.
    pub(crate) async fn follow(&self) -> Result<u64> {
        let Ok(store) = self.store() else { return Ok(0) };
        let mut applied = 0;
        for table in self.tables.iter().filter(|t| t.global) {
            let rounds = table.served().into_iter().map(|part| async move {
                let from = part.next_offset();
                let (next, n) = catch_up(table, &part.store, part.partition, from, &table.stats.replayed).await?;
                part.set_next_offset(next);
                Ok::<u64, Error>(n)
            });
            applied += futures::future::try_join_all(rounds).await?.into_iter().sum::<u64>();
        }
        let mut standbys = self.standbys.lock().await;
        for (index, table) in self.tables.iter().enumerate() {
            if table.global || table.standby_replicas() == 0 {
                continue;
            }
            for partition in 0..table.partition_count() {
                if table.part(partition).is_ok() {
                    continue;
                }
                let standby = match standbys.remove(&(index, partition)) {
                    Some(standby) => standby,
                    None => {
                        let (store, from, _) = open_partition(table, store.clone(), partition).await?;
                        Standby { store, next: from }
                    }
                };
                let (next, n) =
                    catch_up(table, &standby.store, partition, standby.next, &table.stats.standby_applied).await?;
                applied += n;
                standbys.insert((index, partition), Standby { store: standby.store, next });
            }
        }
        Ok(applied)
    }

    /// Whether a global table is followed (its changes should show soon).
    pub(crate) fn has_global(&self) -> bool {
        self.tables.iter().any(|t| t.global)
    }

    /// Checkpoints and lets go of the table partitions of revoked topic
    /// partitions (after their events were drained and committed).
    pub(crate) async fn revoked(&self, tps: &[TopicPartition]) {
        for tp in tps {
            for (_, table) in self.of_topic(&tp.topic) {
                if let Ok(part) = table.part(tp.partition) {
                    let _one = table.checkpointing.lock().await;
                    if let Err(e) = checkpoint(table, &part).await {
                        tracing::warn!(table = %table.name, partition = tp.partition, error = %e,
                            "checkpoint of a revoked partition failed; its next owner replays more of the changelog");
                    }
                    table.remove_part(tp.partition);
                }
            }
        }
    }

    /// Checkpoints every partition served.
    pub(crate) async fn checkpoint(&self) {
        for table in &self.tables {
            let _one = table.checkpointing.lock().await;
            for part in table.served() {
                if let Err(e) = checkpoint(table, &part).await {
                    tracing::warn!(table = %table.name, partition = part.partition, error = %e, "checkpoint failed");
                }
            }
        }
    }

    /// Whether any table needs the follower: a global table, or standbys.
    pub(crate) fn need_following(&self) -> bool {
        self.tables.iter().any(|t| t.global || t.standby_replicas() > 0)
    }

    /// Whether any windowed table closes the windows of idle partitions.
    pub(crate) fn close_idle(&self) -> bool {
        self.tables.iter().any(|t| lock(&t.idle).is_some())
    }

    /// Closes the windows of idle partitions, for windowed tables with an
    /// idle timeout; returns how soon to look again.
    pub(crate) async fn close_idle_windows(&self) -> Duration {
        let mut next = Duration::from_secs(1);
        for table in &self.tables {
            let idle = lock(&table.idle).clone();
            if let Some((timeout, close)) = idle {
                next = next.min(timeout / 4).max(Duration::from_millis(10));
                close().await;
            }
        }
        next
    }

    /// Lets go of every partition and the store without a checkpoint (a
    /// worker dropped without stopping: what was not checkpointed is
    /// replayed from the changelog by the next owner).
    pub(crate) fn abandon(&self) {
        for table in &self.tables {
            for part in table.served() {
                table.remove_part(part.partition);
            }
        }
        if let Ok(mut standbys) = self.standbys.try_lock() {
            standbys.clear();
        }
        lock(&self.store).take();
    }

    /// Checkpoints everything, makes the store durable and closes it.
    pub(crate) async fn close(&self) {
        self.checkpoint().await;
        for table in &self.tables {
            for part in table.served() {
                let store = part.store.clone();
                if let Err(e) = blocking(move || store.flush()).await {
                    tracing::warn!(table = %table.name, partition = part.partition, error = %e, "flushing the store failed");
                }
                table.remove_part(part.partition);
            }
        }
        self.standbys.lock().await.clear();
        lock(&self.store).take();
    }
}

/// Writes a partition's pending changes to its store, once their changelog
/// records are acknowledged. Returns whether it did (the caller holds the
/// table's checkpoint lock).
async fn checkpoint(table: &TableCore, part: &Arc<TablePart>) -> Result<bool> {
    let sends = &table.core.sends;
    let Some((writes, offset, issued)) = part.begin_checkpoint(sends.issued()) else { return Ok(true) };
    if issued > 0 {
        match tokio::time::timeout(CHECKPOINT_ACK_WAIT, sends.wait_for(issued - 1)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(false),
        }
    }
    let store = part.store.clone();
    blocking(move || store.apply(&writes, Some(offset))).await?;
    part.end_checkpoint();
    Ok(true)
}

/// Brings a partition's store up to the end of its changelog.
async fn recover(table: &TableCore, store: Arc<dyn Store>, partition: i32) -> Result<TablePart> {
    let stats = &table.stats;
    stats.recovering.fetch_add(1, Ordering::Relaxed);
    let started = Instant::now();
    let result = replay(table, store, partition).await;
    stats.recovering.fetch_sub(1, Ordering::Relaxed);
    let (part, replayed) = result?;
    stats.recoveries.fetch_add(1, Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(table = %table.name, partition, replayed, took_ms = (secs * 1000.0) as u64,
        records_per_s = (replayed as f64 / secs.max(1e-9)) as u64, "table partition recovered");
    Ok(part)
}

async fn replay(table: &TableCore, store: Arc<dyn Store>, partition: i32) -> Result<(TablePart, u64)> {
    let (part_store, from, _) = open_partition(table, store, partition).await?;
    tracing::info!(table = %table.name, partition, from_offset = from, "table partition recovering");
    let (next, replayed) = catch_up(table, &part_store, partition, from, &table.stats.replayed).await?;
    Ok((TablePart::new(partition, part_store, next), replayed))
}

/// Opens a partition's store: the store, the changelog offset to read from,
/// and whether it had to be dropped (and so is rebuilt from the start).
async fn open_partition(
    table: &TableCore,
    store: Arc<dyn Store>,
    partition: i32,
) -> Result<(Arc<dyn PartitionStore>, i64, bool)> {
    let name = table.name.clone();
    let (part_store, applied, rebuilt) = blocking(move || {
        let part = store.partition(&name, partition)?;
        match part.applied_offset() {
            Ok(Some(offset)) => Ok((part, Some(offset), false)),
            Ok(None) if part.is_empty() => Ok((part, None, false)),
            other => {
                let why = match other {
                    Err(e) => e.to_string(),
                    _ => "keys without a recorded changelog offset".to_owned(),
                };
                tracing::warn!(table = %name, partition, reason = %why, "store partition unusable; rebuilding it from the changelog");
                drop(part);
                store.drop_partition(&name, partition)?;
                Ok((store.partition(&name, partition)?, None, true))
            }
        }
    })
    .await?;
    if rebuilt {
        table.stats.rebuilt.fetch_add(1, Ordering::Relaxed);
    }
    Ok((part_store, applied.map_or(0, |o| o + 1), rebuilt))
}

/// Applies a partition's changelog from `from` to its end to the store;
/// returns the offset after the end and how many records it applied.
async fn catch_up(
    table: &TableCore,
    part_store: &Arc<dyn PartitionStore>,
    partition: i32,
    mut from: i64,
    counter: &std::sync::atomic::AtomicU64,
) -> Result<(i64, u64)> {
    let tp = TopicPartition { topic: table.changelog.clone(), partition };
    let mut replayed = 0u64;
    let keep = lock(&table.keep).clone();
    // Writing a batch to the store overlaps with reading the next one.
    let mut writing: Option<tokio::task::JoinHandle<Result<Vec<Write>>>> = None;
    let mut last_log = Instant::now();
    loop {
        let batch = match table.core.transport.read(&tp, from, RECOVERY_BATCH).await {
            Ok(batch) => batch,
            Err(e) => {
                // What was read before is applied and told, so a retry that
                // reads it again finds it held.
                if let Some(previous) = writing.take() {
                    applied(table, join(previous).await?);
                }
                return Err(e);
            }
        };
        let n = batch.messages.len();
        if let Some(last) = batch.messages.last().map(|m| m.offset) {
            let writes = batch.messages.into_iter().filter_map(|m| Some((m.key?, m.value)));
            if let Some(previous) = writing.take() {
                applied(table, join(previous).await?);
            }
            let ps = part_store.clone();
            writing = Some(match &keep {
                None => {
                    let writes = latest_by_key(writes);
                    tokio::task::spawn_blocking(move || ps.apply(&writes, Some(last)).map(|()| writes))
                }
                Some(keep) => {
                    let (keep, writes) = (keep.clone(), writes.collect::<Vec<_>>());
                    let not_kept = table.stats.clone();
                    tokio::task::spawn_blocking(move || {
                        let (writes, skipped) = kept(ps.as_ref(), &keep, writes)?;
                        not_kept.not_kept.fetch_add(skipped, Ordering::Relaxed);
                        ps.apply(&writes, Some(last)).map(|()| writes)
                    })
                }
            });
            replayed += n as u64;
            counter.fetch_add(n as u64, Ordering::Relaxed);
        }
        from = batch.next.max(from);
        if n < RECOVERY_BATCH {
            break;
        }
        if last_log.elapsed() > Duration::from_secs(5) {
            last_log = Instant::now();
            tracing::info!(table = %table.name, partition, replayed, at_offset = from, "catching up with the changelog");
        }
    }
    if let Some(previous) = writing.take() {
        applied(table, join(previous).await?);
    }
    Ok((from, replayed))
}

/// Tells a global table's subscribers of the changes just applied.
fn applied(table: &TableCore, writes: Vec<Write>) {
    if table.global && table.changes.receiver_count() > 0 {
        for write in writes {
            // No subscriber left is no error.
            let _ = table.changes.send(write);
        }
    }
}

/// What a batch leaves behind under a keep rule: each version read replaces
/// the one held (stored, or earlier in the batch) only if `keep` says so;
/// removals always apply. Returns the writes in key order and how many
/// versions were not kept.
fn kept(store: &dyn PartitionStore, keep: &Keep, writes: Vec<Write>) -> Result<(Vec<Write>, u64)> {
    let mut latest: std::collections::BTreeMap<bytes::Bytes, Option<bytes::Bytes>> = Default::default();
    let mut skipped = 0;
    for (key, value) in writes {
        if let Some(incoming) = &value {
            let held = match latest.get(&key) {
                Some(held) => held.clone(),
                None => store.get(&key)?,
            };
            if let Some(held) = held {
                if held == *incoming {
                    // The version held, read again: nothing changes.
                    continue;
                }
                if !keep(incoming, &held) {
                    skipped += 1;
                    continue;
                }
            }
        }
        latest.insert(key, value);
    }
    Ok((latest.into_iter().collect(), skipped))
}

/// The last write of each key, in key order: what a batch of changelog
/// records leaves behind, written in the order the store's tree is sorted
/// (sled writes sorted keys several times faster than scattered ones).
fn latest_by_key(writes: impl Iterator<Item = Write>) -> Vec<Write> {
    let latest: std::collections::BTreeMap<bytes::Bytes, Option<bytes::Bytes>> = writes.collect();
    latest.into_iter().collect()
}

async fn join<T>(task: tokio::task::JoinHandle<Result<T>>) -> Result<T> {
    task.await
        .map_err(|e| Error::Io { context: "table store task".into(), source: std::io::Error::other(e.to_string()) })?
}
