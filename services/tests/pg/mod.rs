//! The services' view of a test database (`stream_core::testing::TestDatabase`,
//! dropped when the test is done): the rows of the pipeline's tables.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use stream_core::connect::postgres::tokio_postgres;
use stream_core::testing::TestDatabase;

/// How long a test waits for rows.
const WAIT: Duration = Duration::from_secs(60);

/// A name no other test uses.
pub(crate) fn unique(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("strom_test_{tag}_{}_{nanos}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// A database of the test's own, which db-loader creates.
pub(crate) struct TestDb(TestDatabase);

impl TestDb {
    pub(crate) fn new(tag: &str) -> TestDb {
        TestDb(TestDatabase::named(tag))
    }

    pub(crate) fn url(&self) -> String {
        self.0.url()
    }

    pub(crate) fn name(&self) -> &str {
        self.0.name()
    }

    /// `(sensor_num, timestamp_ms) -> (value, count or received_ms)` of a table.
    pub(crate) async fn rows(&self, table: &str) -> BTreeMap<(i64, i64), (f64, i64)> {
        let extra = if table == "average" { "count" } else { "received_ms" };
        let sql = format!("SELECT sensor_num, timestamp_ms, value, {extra} FROM {table}");
        let Ok(client) = self.0.connect().await else { return BTreeMap::new() };
        let rows = match client.query(&sql, &[]).await {
            Ok(rows) => rows,
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => return BTreeMap::new(),
            Err(e) => panic!("{sql}: {e}"),
        };
        rows.iter().map(|r| ((r.get(0), r.get(1)), (r.get(2), r.get(3)))).collect()
    }

    /// Waits until `table` has `n` rows (or the wait is over), and returns them.
    pub(crate) async fn wait_rows(&self, table: &str, n: usize) -> BTreeMap<(i64, i64), (f64, i64)> {
        let deadline = Instant::now() + WAIT;
        loop {
            let rows = self.rows(table).await;
            if rows.len() >= n || Instant::now() > deadline {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
