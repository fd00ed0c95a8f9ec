//! A database of a test's own on the shared PostgreSQL (`STROM_TEST_POSTGRES`,
//! default `postgres://postgres@127.0.0.1:5432`, trust auth), dropped with its
//! connections when the test is done.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use stream_core::connect::postgres::tokio_postgres::{self, NoTls};

/// How long a test waits for rows.
const WAIT: Duration = Duration::from_secs(60);

/// A name no other test uses.
pub(crate) fn unique(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("strom_test_{tag}_{}_{nanos}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// A database name of its own on the shared server (created by the loader),
/// dropped with its connections when this goes out of scope.
pub(crate) struct TestDb {
    server: String,
    pub(crate) name: String,
}

impl TestDb {
    pub(crate) fn new(tag: &str) -> TestDb {
        let server =
            std::env::var("STROM_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
        TestDb { server, name: unique(tag) }
    }

    pub(crate) fn url(&self) -> String {
        format!("{}/{}", self.server, self.name)
    }

    pub(crate) async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url(), NoTls).await.unwrap();
        tokio::spawn(conn);
        client
    }

    /// `(sensor_num, timestamp_ms) -> (value, count or received_ms)` of a table.
    pub(crate) async fn rows(&self, table: &str) -> BTreeMap<(i64, i64), (f64, i64)> {
        let extra = if table == "average" { "count" } else { "received_ms" };
        let sql = format!("SELECT sensor_num, timestamp_ms, value, {extra} FROM {table}");
        let rows = match self.client().await.query(&sql, &[]).await {
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

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin_url, name) = (format!("{}/postgres", self.server), self.name.clone());
        // Drop may run inside the test's runtime: a thread and a runtime of its own.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async {
                let (client, conn) =
                    tokio::time::timeout(Duration::from_secs(5), tokio_postgres::connect(&admin_url, NoTls))
                        .await
                        .ok()?
                        .ok()?;
                tokio::spawn(conn);
                let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                tokio::time::timeout(Duration::from_secs(10), client.batch_execute(&sql)).await.ok()?.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}
