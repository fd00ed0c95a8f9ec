//! db-loader against a database that goes away: PostgreSQL itself stopped
//! for 20 s while readings keep arriving on the real broker, then started
//! again, and later db-loader SIGKILLed mid-stream and restarted. The loader
//! waits, catches up, and the tables hold every reading exactly once with
//! its value; the API answers 503 while the database is down, and again
//! once it is back.
//!
//! It stops the machine's PostgreSQL cluster (`pg_ctlcluster`, as root or
//! the cluster's owner), so it lives in a test binary of its own: cargo runs
//! test binaries one at a time, and no other test shares this one.

#![allow(clippy::unwrap_used)]

#[path = "../../examples/tests/common/mod.rs"]
mod common;
mod pg;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Process, WAIT, kafka_url};
use stream_core::testing::TestDriver;
use strom_services::records::{Average, Temperature};
use strom_services::topics;

const BASE_MS: i64 = 1_760_000_000_000;

/// The machine's PostgreSQL cluster; started again when dropped, whatever happened.
struct Cluster {
    version: String,
}

impl Cluster {
    fn find() -> Cluster {
        let versions = std::fs::read_dir("/etc/postgresql")
            .expect("PostgreSQL's clusters are in /etc/postgresql (Debian's postgresql-common)");
        let version = versions.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).max();
        Cluster { version: version.expect("a PostgreSQL cluster in /etc/postgresql") }
    }

    fn ctl(&self, action: &str) {
        let mut cmd = Command::new("pg_ctlcluster");
        cmd.args(["--skip-systemctl-redirect", &self.version, "main", action]);
        if action == "stop" {
            cmd.args(["-m", "fast"]);
        }
        let status = cmd.status().expect("pg_ctlcluster runs (postgresql-common)");
        assert!(status.success(), "pg_ctlcluster {action}: {status}");
    }

    fn accepts_connections() -> bool {
        std::net::TcpStream::connect_timeout(&"127.0.0.1:5432".parse().unwrap(), Duration::from_secs(1)).is_ok()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !Cluster::accepts_connections() {
            self.ctl("start");
        }
    }
}

fn reading(i: i64) -> (Temperature, Average) {
    let sensor_num = 1 + (i % 4) as u32;
    let timestamp_ms = BASE_MS + i * 10;
    let value = (i % 97) as f64 * 0.25;
    let temperature = Temperature { sensor_num, value, timestamp_ms, received_ms: timestamp_ms + 3 };
    let average = Average { sensor_num, value: value + 0.5, timestamp_ms, count: 10 };
    (temperature, average)
}

/// Sends readings `range`, `per_second` of them a second (0: at once).
async fn send(driver: &TestDriver, range: std::ops::Range<i64>, per_second: u64) {
    let (processed, averages) = (topics::processed(driver.app_ref()), topics::averages(driver.app_ref()));
    for i in range {
        let (t, a) = reading(i);
        driver.send(&processed, Some(&t.sensor_num), &t).await.unwrap();
        driver.send(&averages, Some(&a.sensor_num), &a).await.unwrap();
        if let Some(pause) = 1000_u64.checked_div(per_second) {
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }
}

async fn wait_metric(process: &Process, prefix: &str, at_least: f64) {
    let deadline = Instant::now() + WAIT;
    while process.metric(prefix) < at_least {
        assert!(Instant::now() < deadline, "{prefix} never reached {at_least}: {}", process.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Rows by `(sensor_num, timestamp_ms)`: the value, and `received_ms` or `count`.
type Rows = BTreeMap<(i64, i64), (f64, i64)>;

/// The `temperature` and `average` rows of readings `0..n`.
fn expected(n: i64) -> (Rows, Rows) {
    (0..n)
        .map(|i| {
            let (t, a) = reading(i);
            let key = (i64::from(t.sensor_num), t.timestamp_ms);
            ((key, (t.value, t.received_ms)), (key, (a.value, i64::from(a.count))))
        })
        .unzip()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loader_waits_out_a_stopped_database_and_a_kill_and_loads_every_reading_once() {
    let kafka = kafka_url();
    let cluster = Cluster::find();
    assert!(Cluster::accepts_connections(), "PostgreSQL must be running on 127.0.0.1:5432 at the start");
    let app = TestDriver::app_on(&kafka, "outage");
    let _ = (topics::processed(&app), topics::averages(&app));
    let driver = TestDriver::observe(&app);
    let db = pg::TestDb::new("outage");
    let db_url = db.url();
    let env = [
        ("DATABASE_URL", db_url.as_str()),
        ("STROM_KAFKA_SESSION_TIMEOUT_MS", "6000"),
        ("STROM_KAFKA_HEARTBEAT_INTERVAL_MS", "500"),
    ];
    let mut loader = Process::start(env!("CARGO_BIN_EXE_db-loader"), &app, &env);
    let api = Process::start(env!("CARGO_BIN_EXE_api-gateway"), &app, &env[..1]);
    loader.wait_ready().await;

    // Before: readings flow.
    send(&driver, 0..100, 0).await;
    assert_eq!(db.wait_rows("temperature", 100).await.len(), 100);
    assert_eq!(api.get("/temperature_latest?sensor_num=1").0, 200);

    // PostgreSQL stops for 20 s while readings keep coming.
    cluster.ctl("stop");
    let outage = Instant::now();
    let during = tokio::spawn({
        let driver = TestDriver::observe(&app);
        async move { send(&driver, 100..400, 20).await }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, body) = api.get("/temperature_latest?sensor_num=1");
    assert_eq!(status, 503, "the API says the database is unavailable: {body}");
    let loaded_before = loader.metric("strom_rows_loaded_total{table=\"temperature\"}");
    assert_eq!(loaded_before, 100.0, "nothing loads while the database is down");
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(outage.elapsed())).await;
    cluster.ctl("start");
    during.await.unwrap();

    // After: the loader catches up by itself, every reading once.
    let (temperatures, averages) = expected(400);
    assert_eq!(db.wait_rows("temperature", 400).await, temperatures, "{}", loader.log());
    assert_eq!(db.wait_rows("average", 400).await, averages);
    assert_eq!(loader.metric("strom_rows_loaded_total{table=\"temperature\"}"), 400.0);
    let (status, body) = api.get("/temperature_latest?sensor_num=1");
    assert_eq!(status, 200, "{body}");
    assert!(loader.log().contains("succeeded after retrying"), "the outage is logged: {}", loader.log());

    // db-loader SIGKILLed mid-stream: the replay adds no row and loses none.
    let feeding = tokio::spawn({
        let driver = TestDriver::observe(&app);
        async move { send(&driver, 400..700, 100).await }
    });
    wait_metric(&loader, "strom_rows_loaded_total{table=\"temperature\"}", 450.0).await;
    loader.kill();
    // The killed member's session must expire before the new one joins (Tansu).
    tokio::time::sleep(Duration::from_secs(7)).await;
    loader = Process::start(env!("CARGO_BIN_EXE_db-loader"), &app, &env);
    feeding.await.unwrap();
    let (temperatures, averages) = expected(700);
    assert_eq!(db.wait_rows("temperature", 700).await, temperatures, "{}", loader.log());
    assert_eq!(db.wait_rows("average", 700).await, averages);

    let (code, _, log) = loader.terminate().await;
    assert_eq!(code, 0, "{log}");
    let _ = api.terminate().await;
}
