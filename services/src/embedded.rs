//! The embedded database of the one-process demo: the rows db-loader writes
//! to the Postgres tables `temperature` and `average`, kept instead in a sled
//! database in the process, one tree per table, for api-gateway to read.
//!
//! It keeps Postgres' guarantees the pipeline relies on: a row is keyed by
//! `(sensor_num, timestamp_ms)` and the first row of a key stays (as
//! `ON CONFLICT DO NOTHING`), so replays add nothing; a batch is on disk
//! before [`insert`](Embedded::insert) returns, so the loader commits its
//! offsets only after its rows are durable.

use std::path::Path;

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
