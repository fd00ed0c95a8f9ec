//! The embedded database of the one-process demo: the rows db-loader writes
//! to the Postgres tables `temperature` and `average`, kept instead in a sled
//! database in the process, one tree per table, for api-gateway to read.
//!
//! It keeps Postgres' guarantees the pipeline relies on: a row is keyed by
//! `(sensor_num, timestamp_ms)` and the first row of a key stays (as
//! `ON CONFLICT DO NOTHING`), so replays add nothing; a batch is on disk
//! before [`insert`](Embedded::insert) returns, so the loader commits its
//! offsets only after its rows are durable.
//!
//! It also keeps the rows quake-loader writes to the Postgres table `quakes`:
//! the tree `quakes`, one entry per `unid` holding the [`Quake`] as JSON, with
//! the table's rule that a version replaces the stored one only when its
//! `lastupdate` is later ([`Quake::supersedes`]); see
//! [`upsert_quakes`](Embedded::upsert_quakes).

use std::path::Path;

use crate::quake::records::Quake;

/// The tree of the quakes, keyed by `unid`.
const QUAKES: &str = "quakes";

/// One row as the API reads it: the sensor's time in epoch milliseconds and the value.
pub type Point = (i64, f64);

/// An embedded database (a sled database; cheap to clone).
#[derive(Clone, Debug)]
pub struct Embedded {
    db: sled::Db,
}

impl Embedded {
    /// The database in directory `dir`, created when missing.
    pub fn open(dir: &Path) -> Result<Embedded, sled::Error> {
        Ok(Embedded { db: sled::Config::new().path(dir).open()? })
    }

    /// A database that is removed when the last clone is dropped.
    pub fn temporary() -> Result<Embedded, sled::Error> {
        Ok(Embedded { db: sled::Config::new().temporary(true).open()? })
    }

    /// Adds to `table` the rows `(sensor_num, timestamp_ms, value)` whose key
    /// is new, and returns how many were added once they are on disk.
    pub async fn insert(
        &self,
        table: &str,
        rows: impl IntoIterator<Item = (u32, i64, f64)>,
    ) -> Result<u64, sled::Error> {
        let tree = self.db.open_tree(table)?;
        let mut added = 0;
        for (sensor, ms, value) in rows {
            let fresh = tree.compare_and_swap(key(sensor, ms), None::<&[u8]>, Some(&value.to_be_bytes()[..]))?;
            added += u64::from(fresh.is_ok());
        }
        if added > 0 {
            tree.flush_async().await?;
        }
        Ok(added)
    }

    /// `sensor`'s rows of `table` with `from_ms <= timestamp_ms <= to_ms`, newest first.
    pub fn range(&self, table: &str, sensor: u32, from_ms: i64, to_ms: i64) -> Result<Vec<Point>, sled::Error> {
        if from_ms > to_ms {
            return Ok(Vec::new());
        }
        let tree = self.db.open_tree(table)?;
        tree.range(key(sensor, from_ms)..=key(sensor, to_ms)).rev().map(|kv| kv.map(|(k, v)| point(&k, &v))).collect()
    }

    /// Writes each quake as the entry of its `unid`, unless the stored
    /// version was revised as late or later (a stale update or a replay
    /// changes nothing), in order, so that of several versions of one `unid`
    /// the latest `lastupdate` stays. Returns how many entries were added or
    /// replaced, once they are on disk. The work runs on a blocking thread.
    pub async fn upsert_quakes(&self, quakes: impl IntoIterator<Item = Quake>) -> Result<u64, sled::Error> {
        let quakes: Vec<Quake> = quakes.into_iter().collect();
        if quakes.is_empty() {
            return Ok(0);
        }
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || upsert_quakes(&db, &quakes))
            .await
            .map_err(|e| sled::Error::Io(std::io::Error::other(format!("the quake upsert did not finish: {e}"))))?
    }

    /// The stored version of the quake `unid`, if any.
    pub fn quake(&self, unid: &str) -> Result<Option<Quake>, sled::Error> {
        let tree = self.db.open_tree(QUAKES)?;
        tree.get(unid)?.map(|json| serde_json::from_slice(&json).map_err(|e| invalid(&e))).transpose()
    }

    /// `sensor`'s newest row of `table`, if any.
    pub fn latest(&self, table: &str, sensor: u32) -> Result<Option<Point>, sled::Error> {
        let tree = self.db.open_tree(table)?;
        Ok(tree
            .range(key(sensor, i64::MIN)..=key(sensor, i64::MAX))
            .next_back()
            .transpose()?
            .map(|(k, v)| point(&k, &v)))
    }
}

/// What [`Embedded::upsert_quakes`] does, on the calling thread.
fn upsert_quakes(db: &sled::Db, quakes: &[Quake]) -> Result<u64, sled::Error> {
    let tree = db.open_tree(QUAKES)?;
    let mut changed = 0;
    for quake in quakes {
        let json = serde_json::to_vec(quake).map_err(|e| invalid(&e))?;
        let mut current = tree.get(&quake.unid)?;
        loop {
            if let Some(stored) = &current {
                match serde_json::from_slice::<Quake>(stored) {
                    Ok(stored) if !quake.supersedes(&stored) => break,
                    Ok(_) => {}
                    // Not written by this module: the new version replaces it.
                    Err(e) => {
                        tracing::warn!(unid = %quake.unid, error = %e, "embedded: an unreadable quake is replaced");
                    }
                }
            }
            // Compare and swap: another writer of the same unid meanwhile makes us look again.
            match tree.compare_and_swap(&quake.unid, current.as_ref(), Some(json.as_slice()))? {
                Ok(()) => {
                    changed += 1;
                    break;
                }
                Err(conflict) => current = conflict.current,
            }
        }
    }
    if changed > 0 {
        tree.flush()?;
    }
    Ok(changed)
}

/// A value that is not (or cannot be) a quake's JSON, as an I/O error.
fn invalid(e: &serde_json::Error) -> sled::Error {
    sled::Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("a quake's JSON: {e}")))
}

/// The key of a row: the sensor number and the time with its sign bit
/// flipped, both big-endian, so that keys sort by sensor, then by time.
fn key(sensor: u32, ms: i64) -> [u8; 12] {
    let mut k = [0; 12];
    k[..4].copy_from_slice(&sensor.to_be_bytes());
    k[4..].copy_from_slice(&((ms as u64) ^ (1 << 63)).to_be_bytes());
    k
}

/// A row as stored; entries this module did not write read as NaN at time 0.
fn point(k: &[u8], v: &[u8]) -> Point {
    let ms = k.get(4..12).and_then(|b| b.try_into().ok()).map_or(0, |b| (u64::from_be_bytes(b) ^ (1 << 63)) as i64);
    let value = v.try_into().map_or(f64::NAN, f64::from_be_bytes);
    (ms, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rows_are_kept_once_and_read_newest_first_within_bounds() {
        let db = Embedded::temporary().unwrap();
        let added = db.insert("temperature", [(1, -5, 1.0), (1, 10, 2.0), (1, 20, 3.0), (2, 15, 9.0)]).await.unwrap();
        assert_eq!(added, 4);
        // A replay adds nothing, and the first value written stays.
        assert_eq!(db.insert("temperature", [(1, 10, 99.0), (1, 30, 4.0)]).await.unwrap(), 1);

        assert_eq!(db.range("temperature", 1, -5, 20).unwrap(), vec![(20, 3.0), (10, 2.0), (-5, 1.0)]);
        assert_eq!(db.range("temperature", 1, 11, 29).unwrap(), vec![(20, 3.0)]);
        assert_eq!(db.range("temperature", 1, 20, 10).unwrap(), vec![]);
        assert_eq!(db.latest("temperature", 1).unwrap(), Some((30, 4.0)));
        assert_eq!(db.latest("temperature", 2).unwrap(), Some((15, 9.0)));
        assert_eq!(db.latest("temperature", 3).unwrap(), None);
        // Tables are apart.
        assert_eq!(db.latest("average", 1).unwrap(), None);
    }

    fn quake(unid: &str, lastupdate_s: i64, mag: f64) -> Quake {
        let t = chrono::DateTime::UNIX_EPOCH + chrono::Duration::seconds(1_800_000_000);
        Quake {
            action: crate::quake::records::Action::Update,
            unid: unid.into(),
            time: t,
            lastupdate: t + chrono::Duration::seconds(lastupdate_s),
            lat: 38.1,
            lon: 21.3,
            depth: None,
            mag,
            magtype: Some("ml".into()),
            flynn_region: None,
            auth: None,
            evtype: None,
            source_id: None,
            source_catalog: None,
        }
    }

    #[tokio::test]
    async fn a_quake_is_replaced_only_by_a_later_revision() {
        let db = Embedded::temporary().unwrap();
        assert_eq!(db.upsert_quakes([quake("a", 0, 4.0), quake("b", 0, 3.0)]).await.unwrap(), 2);
        // Newer, stale, a replay, another with the same lastupdate: only the newer applies.
        let (newer, stale, same) = (quake("a", 60, 4.5), quake("a", 30, 9.9), quake("b", 0, 9.9));
        assert_eq!(db.upsert_quakes([newer.clone(), stale, quake("b", 0, 3.0), same]).await.unwrap(), 1);
        assert_eq!(db.quake("a").unwrap(), Some(newer));
        assert_eq!(db.quake("b").unwrap(), Some(quake("b", 0, 3.0)));
        assert_eq!(db.quake("c").unwrap(), None);
        // Versions of one unid in one call: the latest stays, whatever the order.
        assert_eq!(db.upsert_quakes([quake("c", 5, 1.0), quake("c", 9, 2.0), quake("c", 7, 3.0)]).await.unwrap(), 2);
        assert_eq!(db.quake("c").unwrap(), Some(quake("c", 9, 2.0)));
        assert_eq!(db.upsert_quakes([]).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn rows_survive_a_reopen() {
        let dir = std::env::temp_dir().join(format!("strom-embedded-{}", std::process::id()));
        {
            let db = Embedded::open(&dir).unwrap();
            db.insert("average", [(7, 1_700_000_000_000, 21.5)]).await.unwrap();
        }
        let db = Embedded::open(&dir).unwrap();
        assert_eq!(db.latest("average", 7).unwrap(), Some((1_700_000_000_000, 21.5)));
        drop(db);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
