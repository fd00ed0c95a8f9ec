//! Table storage: where the partitions of tables keep their keys and values on
//! a worker, and the changelog offset each partition has applied.
//!
//! A [`Store`] opens one [`PartitionStore`] per (table, partition). Two
//! backends: [`SledStore`] (one sled database under the app's state directory,
//! one tree per table partition) and [`MemoryStore`]. Keys and values are
//! bytes: tables encode them with their codecs.
//!
//! A partition records the last changelog offset it applied *after* the
//! writes of that offset, so after a crash the recorded offset is never ahead
//! of the data: recovery replays from it, and replaying a changelog record
//! twice writes the same value twice.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::tracking::lock;

/// One write of a batch: a value, or `None` to delete the key.
pub type Write = (Bytes, Option<Bytes>);

/// Opens table partitions.
pub trait Store: Send + Sync + 'static {
    /// The partition `partition` of `table`, created empty when missing.
    fn partition(&self, table: &str, partition: i32) -> Result<Arc<dyn PartitionStore>>;
    /// Forgets a partition's contents and offset (to rebuild it from its changelog).
    fn drop_partition(&self, table: &str, partition: i32) -> Result<()>;
}

/// The keys and values of one table partition.
pub trait PartitionStore: Send + Sync + 'static {
    /// The value of `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>>;
    /// Applies writes in order; then, if given, records `offset` as the last
    /// changelog offset applied.
    fn apply(&self, writes: &[Write], offset: Option<i64>) -> Result<()>;
    /// The last changelog offset applied, if any.
    fn applied_offset(&self) -> Result<Option<i64>>;
    /// Every key and value, in key order.
    fn entries(&self) -> Result<Vec<(Bytes, Bytes)>>;
    /// How many keys.
    fn len(&self) -> usize;
    /// Whether there are no keys.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Makes what was applied durable.
    fn flush(&self) -> Result<()>;
}

fn store_err(context: impl std::fmt::Display, e: impl std::fmt::Display) -> Error {
    Error::Io { context: context.to_string(), source: std::io::Error::other(e.to_string()) }
}

/// How long opening waits for another holder of the store's lock to let go.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Whether sled could not open the store because something holds its lock.
fn is_locked(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(e)
        if e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("could not acquire lock"))
}

/// Writes per sled batch (see [`SledPartition::apply`]).
const SLED_BATCH: usize = 256;

fn tree_name(table: &str, partition: i32) -> String {
    format!("{table}/{partition}")
}

/// Tables in a sled database at `<state dir>/tables`.
pub struct SledStore {
    db: sled::Db,
    path: PathBuf,
    /// The applied offsets, one tree for all partitions.
    offsets: sled::Tree,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").field("path", &self.path).finish_non_exhaustive()
    }
}

impl SledStore {
    /// Opens (or creates) the store under `state_dir`. A store sled finds
    /// corrupt is moved aside and started afresh: recovery rebuilds it from
    /// the changelogs.
    pub fn open(state_dir: &Path) -> Result<SledStore> {
        let path = state_dir.join("tables");
        let config = sled::Config::new().path(&path).mode(sled::Mode::HighThroughput);
        // A store closed a moment ago in this process (a worker restarted) is
        // unlocked once sled's background flusher has let go of it.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let mut opened = config.open();
        while matches!(&opened, Err(e) if is_locked(e)) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
            opened = config.open();
        }
        let db = match opened {
            Ok(db) => db,
            Err(sled::Error::Corruption { .. }) => {
                let aside = state_dir.join(format!("tables.corrupt-{}", std::process::id()));
                tracing::warn!(path = %path.display(), moved_to = %aside.display(),
                    "the table store is corrupt; starting afresh (tables rebuild from their changelogs)");
                std::fs::rename(&path, &aside).map_err(|e| store_err(format!("moving {} aside", path.display()), e))?;
                config.open().map_err(|e| store_err(format!("opening the table store {}", path.display()), e))?
            }
            Err(e) if is_locked(&e) => {
                return Err(store_err(
                    format!("opening the table store {}", path.display()),
                    "another worker uses this state directory (sled holds a lock on it); give each worker its \
                     own STROM_STATE_DIR",
                ));
            }
            Err(e) => return Err(store_err(format!("opening the table store {}", path.display()), e)),
        };
        let offsets = db.open_tree("__strom_offsets").map_err(|e| store_err("opening the offsets tree", e))?;
        Ok(SledStore { db, path, offsets })
    }
}

impl Store for SledStore {
    fn partition(&self, table: &str, partition: i32) -> Result<Arc<dyn PartitionStore>> {
        let name = tree_name(table, partition);
        let tree = self.db.open_tree(&name).map_err(|e| store_err(format!("opening table partition {name}"), e))?;
        Ok(Arc::new(SledPartition { tree, offsets: self.offsets.clone(), name }))
    }

    fn drop_partition(&self, table: &str, partition: i32) -> Result<()> {
        let name = tree_name(table, partition);
        self.offsets.remove(&name).map_err(|e| store_err(format!("dropping {name}"), e))?;
        self.db.drop_tree(&name).map_err(|e| store_err(format!("dropping {name}"), e))?;
        Ok(())
    }
}

struct SledPartition {
    tree: sled::Tree,
    offsets: sled::Tree,
    name: String,
}

impl PartitionStore for SledPartition {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        let v = self.tree.get(key).map_err(|e| store_err(format!("reading {}", self.name), e))?;
        Ok(v.map(|v| Bytes::copy_from_slice(&v)))
    }

    fn apply(&self, writes: &[Write], offset: Option<i64>) -> Result<()> {
        // In sled batches of a few hundred: sled applies a large batch
        // several times slower per write than many small ones (it is one
        // atomic log reservation), and atomicity is not needed here, as the
        // offset is recorded after the last write and replaying is idempotent.
        for chunk in writes.chunks(SLED_BATCH) {
            let mut batch = sled::Batch::default();
            for (key, value) in chunk {
                match value {
                    Some(v) => batch.insert(&key[..], &v[..]),
                    None => batch.remove(&key[..]),
                }
            }
            self.tree.apply_batch(batch).map_err(|e| store_err(format!("writing {}", self.name), e))?;
        }
        if let Some(offset) = offset {
            self.offsets
                .insert(self.name.as_bytes(), &offset.to_be_bytes())
                .map_err(|e| store_err(format!("recording the offset of {}", self.name), e))?;
        }
        Ok(())
    }

    fn applied_offset(&self) -> Result<Option<i64>> {
        let v = self.offsets.get(self.name.as_bytes()).map_err(|e| store_err(format!("reading {}", self.name), e))?;
        match v {
            None => Ok(None),
            Some(v) => {
                let bytes: [u8; 8] = v.as_ref().try_into().map_err(|_| {
                    store_err(format!("reading the offset of {}", self.name), "not 8 bytes: the store is corrupt")
                })?;
                Ok(Some(i64::from_be_bytes(bytes)))
            }
        }
    }

    fn entries(&self) -> Result<Vec<(Bytes, Bytes)>> {
        self.tree
            .iter()
            .map(|kv| {
                kv.map(|(k, v)| (Bytes::copy_from_slice(&k), Bytes::copy_from_slice(&v)))
                    .map_err(|e| store_err(format!("reading {}", self.name), e))
            })
            .collect()
    }

    fn len(&self) -> usize {
        self.tree.len()
    }

    fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    fn flush(&self) -> Result<()> {
        self.tree.flush().map_err(|e| store_err(format!("flushing {}", self.name), e))?;
        self.offsets.flush().map_err(|e| store_err("flushing the offsets", e))?;
        Ok(())
    }
}

/// Tables in memory (lost with the process; recovery rebuilds them).
#[derive(Debug, Default)]
pub struct MemoryStore {
    partitions: Mutex<HashMap<String, Arc<MemoryPartition>>>,
}

#[derive(Debug, Default)]
struct MemoryPartition {
    data: Mutex<(BTreeMap<Bytes, Bytes>, Option<i64>)>,
}

impl Store for MemoryStore {
    fn partition(&self, table: &str, partition: i32) -> Result<Arc<dyn PartitionStore>> {
        let p = lock(&self.partitions).entry(tree_name(table, partition)).or_default().clone();
        Ok(p)
    }

    fn drop_partition(&self, table: &str, partition: i32) -> Result<()> {
        lock(&self.partitions).remove(&tree_name(table, partition));
        Ok(())
    }
}

impl PartitionStore for MemoryPartition {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        Ok(lock(&self.data).0.get(key).cloned())
    }

    fn apply(&self, writes: &[Write], offset: Option<i64>) -> Result<()> {
        let mut data = lock(&self.data);
        for (key, value) in writes {
            match value {
                Some(v) => data.0.insert(key.clone(), v.clone()),
                None => data.0.remove(key),
            };
        }
        if offset.is_some() {
            data.1 = offset;
        }
        Ok(())
    }

    fn applied_offset(&self) -> Result<Option<i64>> {
        Ok(lock(&self.data).1)
    }

    fn entries(&self) -> Result<Vec<(Bytes, Bytes)>> {
        Ok(lock(&self.data).0.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    fn len(&self) -> usize {
        lock(&self.data).0.len()
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn exercise(store: &dyn Store) {
        let p0 = store.partition("counts", 0).unwrap();
        let p1 = store.partition("counts", 1).unwrap();
        assert_eq!(p0.applied_offset().unwrap(), None);
        p0.apply(&[(b("a"), Some(b("1"))), (b("b"), Some(b("2")))], Some(7)).unwrap();
        p0.apply(&[(b("a"), Some(b("3"))), (b("b"), None)], None).unwrap();
        p1.apply(&[(b("a"), Some(b("x")))], Some(0)).unwrap();
        assert_eq!(p0.get(b"a").unwrap(), Some(b("3")));
        assert_eq!(p0.get(b"b").unwrap(), None);
        assert_eq!(p0.applied_offset().unwrap(), Some(7), "an apply without offset keeps the last one");
        assert_eq!(p1.get(b"a").unwrap(), Some(b("x")), "partitions are apart");
        assert_eq!(p0.len(), 1);
        p0.apply(&[(b("c"), Some(b("4")))], Some(9)).unwrap();
        assert_eq!(p0.entries().unwrap(), vec![(b("a"), b("3")), (b("c"), b("4"))]);
        assert_eq!(p0.applied_offset().unwrap(), Some(9));
        p0.flush().unwrap();
        store.drop_partition("counts", 0).unwrap();
        let again = store.partition("counts", 0).unwrap();
        assert!(again.is_empty());
        assert_eq!(again.applied_offset().unwrap(), None);
        assert_eq!(store.partition("counts", 1).unwrap().len(), 1);
    }

    #[test]
    fn memory_store_keeps_partitions_and_offsets() {
        exercise(&MemoryStore::default());
    }

    #[test]
    fn sled_store_keeps_partitions_and_offsets_across_reopening() {
        let dir = tempfile::tempdir().unwrap();
        exercise(&SledStore::open(dir.path()).unwrap());
        let store = SledStore::open(dir.path()).unwrap();
        let p1 = store.partition("counts", 1).unwrap();
        assert_eq!(p1.get(b"a").unwrap(), Some(b("x")), "reopened from disk");
        assert_eq!(p1.applied_offset().unwrap(), Some(0));
    }
}
