//! The Postgres sink against a real PostgreSQL: batches from an agent, replays,
//! a database that goes away mid-stream, and errors that must not be retried.
//!
//! PostgreSQL must answer on `STROM_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432`, trust auth). Every test works in a
//! database of its own and drops it at the end. The outage test runs a
//! private server (initdb + pg_ctl as the `postgres` OS user) on a free port
//! and stops that one, never the shared server.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use stream_core::connect::postgres::tokio_postgres::{self, NoTls};
use stream_core::connect::postgres::{PgError, PgSink, Postgres};
use stream_core::prelude::*;
use stream_core::testing::{TestDatabase, TestDriver};

/// How long one test may take, all of it.
const BOUND: Duration = Duration::from_secs(120);
/// How long a test waits for one thing.
const WAIT: Duration = Duration::from_secs(60);

#[derive(Record, Serialize, Deserialize, Clone, Debug)]
struct Reading {
    #[record(key)]
    id: i64,
    value: f64,
}

/// Runs a test body, failing it when it takes longer than [`BOUND`].
async fn bounded(body: impl Future<Output = ()>) {
    tokio::time::timeout(BOUND, body).await.expect("the test finished in time");
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) =
        tokio_postgres::connect(url, NoTls).await.unwrap_or_else(|e| panic!("PostgreSQL at {url}: {e}"));
    tokio::spawn(conn);
    client
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

/// The app's metric line that starts with `prefix`, parsed.
fn metric(app: &App, prefix: &str) -> Option<f64> {
    let text = app.metrics().encode();
    text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS readings (id bigint PRIMARY KEY, value double precision NOT NULL)";

/// An agent that writes each batch of readings with one insert, and records the batch sizes.
fn loader(app: &App, input: &Topic<i64, Reading>, rows: PgSink, batches: Arc<Mutex<Vec<usize>>>) {
    app.agent("load", input, move |events| {
        let (rows, batches) = (rows.clone(), batches.clone());
        async move {
            let mut batched = events.take(100, Duration::from_millis(20));
            while let Some(batch) = batched.next().await {
                rows.insert(batch.iter().map(|e| (e.value().id, e.value().value))).await?;
                batches.lock().unwrap().push(batch.len());
            }
            Ok(())
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_from_an_agent_land_as_rows_and_offsets_are_committed_only_after_them() {
    bounded(async {
        let db = TestDatabase::create("batches").await.unwrap();
        let pg = Postgres::connect_lazy(&db.url()).unwrap();
        pg.ensure_schema(SCHEMA).await.unwrap();
        let app = TestDriver::app("pg-batches");
        pg.register_metrics(app.metrics());
        let input = app.topic::<i64, Reading>("in");
        let batches: Arc<Mutex<Vec<usize>>> = Arc::default();
        loader(&app, &input, PgSink::new(&pg, "readings", &["id", "value"]).on_conflict_do_nothing(), batches.clone());
        let driver = TestDriver::start(&app).await.unwrap();

        // Hold the table locked against writes: the agent's insert waits, and so must the commit.
        let mut locker = connect(&db.url()).await;
        let lock = locker.transaction().await.unwrap();
        lock.batch_execute("LOCK TABLE readings IN EXCLUSIVE MODE").await.unwrap();
        for id in 0..300 {
            driver.send(&input, Some(&id), &Reading { id, value: id as f64 / 2.0 }).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(800)).await;
        let reader = connect(&db.url()).await;
        assert_eq!(count(&reader, "SELECT count(*) FROM readings").await, 0);
        assert!(driver.committed("in", 0).await.unwrap().unwrap_or(0) == 0, "nothing committed while the insert waits");
        lock.commit().await.unwrap();

        // Whenever an offset is committed, its rows are already there.
        driver
            .wait_until(WAIT, async |d| {
                let committed = d.committed("in", 0).await?.unwrap_or(0);
                let rows = count(&reader, "SELECT count(*) FROM readings").await;
                assert!(rows >= committed, "offset {committed} committed with only {rows} rows");
                d.caught_up("in").await
            })
            .await
            .unwrap();
        assert_eq!(count(&reader, "SELECT count(*) FROM readings").await, 300);
        assert_eq!(count(&reader, "SELECT sum(id)::bigint FROM readings").await, (0..300).sum::<i64>());
        let sizes = batches.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 300);
        assert!(sizes.len() < 300 && sizes.iter().any(|&n| n > 1), "rows went in batches: {sizes:?}");
        assert_eq!(metric(&app, "strom_postgres_rows_inserted_total{table=\"readings\"}"), Some(300.0));
        assert_eq!(metric(&app, "strom_postgres_insert_batches_total{table=\"readings\"}"), Some(sizes.len() as f64));
        assert_eq!(metric(&app, "strom_postgres_up"), Some(1.0));
        assert!(app.metrics().encode().contains("strom_postgres_insert_seconds_count{table=\"readings\"}"));
        driver.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_batch_leaves_one_row_per_key() {
    bounded(async {
        let db = TestDatabase::create("replay").await.unwrap();
        let pg = Postgres::connect_lazy(&db.url()).unwrap();
        pg.ensure_schema(SCHEMA).await.unwrap();
        // Seven rows per statement: a batch of 50 is several statements in one transaction.
        let rows = PgSink::new(&pg, "readings", &["id", "value"]).on_conflict_do_nothing().max_rows_per_statement(7);
        let batch: Vec<(i64, f64)> = (0..50).map(|id| (id, 1.0)).collect();
        assert_eq!(rows.insert(batch.iter().copied()).await.unwrap(), 50);
        // As after a crash: the same batch again, and one that overlaps it.
        assert_eq!(rows.insert(batch.iter().copied()).await.unwrap(), 0);
        assert_eq!(rows.insert((40_i64..60).map(|id| (id, 2.0))).await.unwrap(), 10);
        let reader = connect(&db.url()).await;
        assert_eq!(count(&reader, "SELECT count(*) FROM readings").await, 60);
        assert_eq!(count(&reader, "SELECT count(*) FROM readings WHERE value = 2").await, 10);

        // An update clause makes the replay of a newer value win, once.
        let upsert =
            PgSink::new(&pg, "readings", &["id", "value"]).on_conflict("(id) DO UPDATE SET value = EXCLUDED.value");
        assert_eq!(upsert.insert([(0_i64, 9.0_f64)]).await.unwrap(), 1);
        assert_eq!(upsert.insert([(0_i64, 9.0_f64)]).await.unwrap(), 1);
        assert_eq!(count(&reader, "SELECT count(*) FROM readings WHERE value = 9").await, 1);
        assert_eq!(count(&reader, "SELECT count(*) FROM readings").await, 60);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_that_retrying_cannot_fix_fail_the_batch_at_once() {
    bounded(async {
        let db = TestDatabase::create("rejected").await.unwrap();
        let pg = Postgres::connect_lazy(&db.url()).unwrap();
        let app = TestDriver::app("pg-rejected");
        pg.register_metrics(app.metrics());

        // A syntax error in the schema.
        let started = std::time::Instant::now();
        let err = pg.ensure_schema("CREATE TABLEE readings (id bigint)").await.unwrap_err();
        assert!(matches!(err, PgError::Rejected { .. }), "{err:?}");
        assert_eq!(err.sqlstate(), Some("42601"));
        assert!(err.to_string().contains("syntax error"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2), "not retried");

        pg.ensure_schema(SCHEMA).await.unwrap();
        // A unique violation without a conflict clause, and a value of the wrong type.
        let plain = PgSink::new(&pg, "readings", &["id", "value"]);
        plain.insert([(1_i64, 1.0_f64)]).await.unwrap();
        let err = plain.insert([(1_i64, 1.0_f64)]).await.unwrap_err();
        assert_eq!(err.sqlstate(), Some("23505"), "{err}");
        let err = plain.insert([(2_i32, 1.0_f64)]).await.unwrap_err();
        assert!(err.to_string().contains("the insert into readings"), "{err}");
        // A row of the wrong width never reaches the database.
        let err = plain.insert([(3_i64, 1.0_f64, "x")]).await.unwrap_err();
        assert!(matches!(err, PgError::RowWidth { got: 3, expected: 2, .. }), "{err:?}");
        assert_eq!(metric(&app, "strom_postgres_retries_total"), None, "nothing was retried");

        // In an agent: a column that does not exist fails the batch, and the
        // agent's policy dead-letters it.
        let input = app.topic::<i64, Reading>("in");
        let bad = PgSink::new(&pg, "readings", &["id", "no_such_column"]);
        app.agent("load", &input, move |events| {
            let bad = bad.clone();
            async move {
                let mut batched = events.take(10, Duration::from_millis(20));
                while let Some(batch) = batched.next().await {
                    bad.insert(batch.iter().map(|e| (e.value().id, e.value().value))).await?;
                }
                Ok(())
            }
        })
        .on_error(ErrorPolicy::retry(1).backoff(Duration::from_millis(10), Duration::from_millis(10)));
        let driver = TestDriver::start(&app).await.unwrap();
        driver.send(&input, Some(&7), &Reading { id: 7, value: 1.0 }).await.unwrap();
        let letters = driver.dead_letters("in", 1, WAIT).await.unwrap();
        assert_eq!(letters[0].kind, "handler");
        assert!(letters[0].error.contains("no_such_column"), "{}", letters[0].error);
        assert!(letters[0].error.contains("42703"), "{}", letters[0].error);
        driver.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_creates_a_missing_database() {
    bounded(async {
        let db = TestDatabase::named("created");
        let pg = Postgres::connect_lazy(&db.url()).unwrap().create_database_if_missing();
        pg.ensure_schema(SCHEMA).await.unwrap();
        let rows = PgSink::new(&pg, "readings", &["id", "value"]);
        assert_eq!(rows.insert([(1_i64, 0.5_f64)]).await.unwrap(), 1);
        let reader = connect(&db.url()).await;
        assert_eq!(count(&reader, "SELECT count(*) FROM readings").await, 1);
    })
    .await;
}

/// A private PostgreSQL server in a temporary directory, run as the
/// `postgres` OS user (the server refuses to run as root); stopped and
/// removed when this goes out of scope.
struct PrivateServer {
    dir: tempfile::TempDir,
    port: u16,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn as_postgres(program: &str, args: &[&str]) -> std::io::Result<std::process::Output> {
    let program = Path::new(PG_BIN).join(program);
    Command::new("runuser").arg("-u").arg("postgres").arg("--").arg(program).args(args).output()
}

fn checked(what: &str, out: std::io::Result<std::process::Output>) {
    let out = out.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PrivateServer {
    fn init() -> PrivateServer {
        let dir = tempfile::tempdir().unwrap();
        let id = |flag: &str| -> u32 {
            let out = Command::new("id").arg(flag).arg("postgres").output().unwrap();
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        std::os::unix::fs::chown(dir.path(), Some(id("-u")), Some(id("-g"))).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let server = PrivateServer { dir, port };
        let data = server.data();
        checked(
            "initdb",
            as_postgres("initdb", &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync", "--no-instructions"]),
        );
        server
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn start(&self) {
        let options =
            format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", self.port, self.dir.path().display());
        let log = self.log().display().to_string();
        checked(
            "pg_ctl start",
            as_postgres("pg_ctl", &["-D", &self.data(), "-o", &options, "-l", &log, "-w", "-t", "30", "start"]),
        );
    }

    fn stop(&self, mode: &str) -> std::io::Result<std::process::Output> {
        as_postgres("pg_ctl", &["-D", &self.data(), "-m", mode, "-w", "-t", "30", "stop"])
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        // Whatever state it is in; the directory goes with `dir`.
        let _ = self.stop("immediate");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loader_waits_while_the_database_is_down_and_catches_up_without_loss() {
    bounded(async {
        let server = tokio::task::spawn_blocking(|| {
            let server = PrivateServer::init();
            server.start();
            server
        })
        .await
        .unwrap();
        let server = Arc::new(server);
        let pg = Postgres::connect_lazy(&server.url("loader"))
            .unwrap()
            .create_database_if_missing()
            .backoff(Duration::from_millis(50), Duration::from_millis(800));
        pg.ensure_schema(SCHEMA).await.unwrap();

        let app = TestDriver::app("pg-down");
        pg.register_metrics(app.metrics());
        let input = app.topic::<i64, Reading>("in");
        let batches: Arc<Mutex<Vec<usize>>> = Arc::default();
        loader(&app, &input, PgSink::new(&pg, "readings", &["id", "value"]).on_conflict_do_nothing(), batches.clone());
        let driver = Arc::new(TestDriver::start(&app).await.unwrap());

        // A steady stream of 2,000 readings over about four seconds...
        const N: i64 = 2000;
        let (d, topic) = (driver.clone(), input.clone());
        let producer = tokio::spawn(async move {
            for id in 0..N {
                d.send(&topic, Some(&id), &Reading { id, value: 1.0 }).await.unwrap();
                if id % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        // ...and the database goes away for five seconds in the middle of it.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let s = server.clone();
        tokio::task::spawn_blocking(move || checked("pg_ctl stop", s.stop("fast"))).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(metric(&app, "strom_postgres_up"), Some(0.0), "the gauge shows the database down");
        assert!(metric(&app, "strom_postgres_retries_total{table=\"readings\"}").unwrap_or(0.0) > 0.0);
        assert!(!driver.caught_up("in").await.unwrap(), "nothing committed past what is in the database");
        let s = server.clone();
        tokio::task::spawn_blocking(move || s.start()).await.unwrap();

        producer.await.unwrap();
        driver.wait_until(WAIT, async |d| d.caught_up("in").await).await.unwrap();
        let reader = connect(&server.url("loader")).await;
        assert_eq!(count(&reader, "SELECT count(*) FROM readings").await, N);
        assert_eq!(count(&reader, "SELECT count(DISTINCT id) FROM readings").await, N);
        assert_eq!(metric(&app, "strom_postgres_up"), Some(1.0));
        assert!(driver.messages("in.dlq").await.map(|m| m.is_empty()).unwrap_or(true), "nothing dead-lettered");
        drop(reader);
        let Ok(driver) = Arc::try_unwrap(driver) else { panic!("the producer is done with the driver") };
        driver.stop().await.unwrap();
    })
    .await;
}
