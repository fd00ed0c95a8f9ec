//! quake-loader in process, on the memory transport, against a real
//! PostgreSQL and against the embedded database: every earthquake one row at
//! its latest revision, whatever the order, the staleness or the replays.
//!
//! PostgreSQL must answer on `STROM_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432`, trust auth). Each test works in a
//! database of its own (which the loader creates), dropped at the end.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use stream_core::prelude::*;
use stream_core::testing::{TestDatabase, TestDriver};
use strom_services::embedded::Embedded;
use strom_services::loader::Database;
use strom_services::quake::records::{Action, Quake, RAW};
use strom_services::quake::{self, loader};

/// How long one test may take, all of it.
const BOUND: Duration = Duration::from_secs(150);
/// How long a test waits for one thing.
const WAIT: Duration = Duration::from_secs(60);

/// Where the loader writes, and how the test reads it back.
enum Store {
    Postgres(TestDatabase),
    Embedded(Embedded),
}

impl Store {
    async fn database(&self, app: &App) -> Database {
        match self {
            Store::Postgres(db) => tokio::time::timeout(WAIT, loader::postgres(app, &db.url())).await.unwrap().unwrap(),
            Store::Embedded(e) => Database::Embedded(e.clone()),
        }
    }

    /// The stored version of `unid`.
    async fn quake(&self, unid: &str) -> Option<Quake> {
        match self {
            Store::Embedded(e) => e.quake(unid).unwrap(),
            Store::Postgres(db) => {
                let client = db.connect().await.unwrap();
                let sql = "SELECT action, unid, time, lastupdate, lat, lon, depth, mag, magtype, flynn_region, \
                           auth, evtype, source_id, source_catalog FROM quakes WHERE unid = $1";
                let row = client.query_opt(sql, &[&unid]).await.unwrap()?;
                let time = |i: usize| DateTime::<Utc>::from(row.get::<_, SystemTime>(i));
                Some(Quake {
                    action: match row.get::<_, &str>(0) {
                        "create" => Action::Create,
                        "update" => Action::Update,
                        other => panic!("action {other:?}"),
                    },
                    unid: row.get(1),
                    time: time(2),
                    lastupdate: time(3),
                    lat: row.get(4),
                    lon: row.get(5),
                    depth: row.get(6),
                    mag: row.get(7),
                    magtype: row.get(8),
                    flynn_region: row.get(9),
                    auth: row.get(10),
                    evtype: row.get(11),
                    source_id: row.get(12),
                    source_catalog: row.get(13),
                })
            }
        }
    }

    /// Postgres: the number of rows, and each row's `loaded_at`.
    async fn loaded_at(&self) -> Option<Vec<(String, SystemTime)>> {
        let Store::Postgres(db) = self else { return None };
        let client = db.connect().await.unwrap();
        let rows = client.query("SELECT unid, loaded_at FROM quakes ORDER BY unid", &[]).await.unwrap();
        Some(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

/// A version of event `unid`, revised `lastupdate_s` seconds after it happened.
fn quake(unid: &str, action: Action, lastupdate_s: i64, mag: f64) -> Quake {
    let time: DateTime<Utc> = "2026-12-01T10:00:00.5Z".parse().unwrap();
    Quake {
        action,
        unid: unid.into(),
        time,
        lastupdate: time + chrono::Duration::seconds(lastupdate_s) + chrono::Duration::milliseconds(250),
        lat: 38.1,
        lon: 21.3,
        depth: Some(10.0),
        mag,
        magtype: Some("ml".into()),
        flynn_region: Some("GREECE".into()),
        auth: Some("EMSC".into()),
        evtype: Some("ke".into()),
        source_id: Some(format!("src-{unid}")),
        source_catalog: Some("EMSC-RTS".into()),
    }
}

/// The sum of the app's metric lines that start with `prefix`.
fn metric(app: &App, prefix: &str) -> f64 {
    let text = app.metrics().encode();
    text.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

const ROWS: &str = r#"strom_rows_loaded_total{table="quakes"}"#;
const STALE: &str = "strom_quake_stale_updates_total";

/// A worker of quake-loader on the memory broker `broker`.
async fn start(store: &Store, broker: &str) -> (App, TestDriver, Topic<String, Quake>) {
    let app = TestDriver::app_on(&format!("memory://{broker}"), "quake-loader");
    let raw = quake::raw(&app);
    let db = store.database(&app).await;
    loader::load(&app, &raw, &db);
    let driver = TestDriver::start(&app).await.unwrap();
    (app, driver, raw)
}

async fn send(driver: &TestDriver, raw: &Topic<String, Quake>, quakes: &[Quake]) {
    for q in quakes {
        driver.send(raw, Some(&q.unid), q).await.unwrap();
    }
}

async fn caught_up(driver: &TestDriver) {
    driver.wait_until(WAIT, async |d| d.caught_up(RAW).await).await.unwrap();
}

/// The stored versions of `unids` are `expected`.
async fn assert_stored(store: &Store, expected: &[&Quake], context: &str) {
    for q in expected {
        assert_eq!(store.quake(&q.unid).await.as_ref(), Some(*q), "{}: {context}", q.unid);
    }
    if let Some(rows) = store.loaded_at().await {
        assert_eq!(rows.len(), expected.len(), "one row per unid: {context}");
    }
}

async fn newest_version_wins(store: Store, broker: &str) {
    let (app, mut driver, raw) = start(&store, broker).await;

    // Three new events.
    let created: Vec<Quake> = ["a", "b", "c"].iter().map(|u| quake(u, Action::Create, 0, 3.0)).collect();
    send(&driver, &raw, &created).await;
    caught_up(&driver).await;
    assert_stored(&store, &[&created[0], &created[1], &created[2]], "created").await;
    assert_eq!((metric(&app, ROWS), metric(&app, STALE)), (3.0, 0.0));
    let first_loads = store.loaded_at().await;

    // A revision of a, then a stale one (revised earlier, arriving later);
    // e's revision before its creation. Only the later revisions apply.
    let mut a_revised = quake("a", Action::Update, 60, 4.5);
    (a_revised.depth, a_revised.magtype) = (None, Some("mw".into()));
    let a_stale = quake("a", Action::Update, 30, 9.9);
    let (e_revised, e_created) = (quake("e", Action::Update, 10, 2.5), quake("e", Action::Create, 0, 2.0));
    let updates = [a_revised.clone(), a_stale, e_revised.clone(), e_created];
    send(&driver, &raw, &updates).await;
    caught_up(&driver).await;
    let latest = [&a_revised, &created[1], &created[2], &e_revised];
    assert_stored(&store, &latest, "after the updates").await;
    assert_eq!((metric(&app, ROWS), metric(&app, STALE)), (5.0, 2.0), "two rows changed, two versions stale");
    if let (Some(before), Some(after)) = (&first_loads, store.loaded_at().await) {
        assert!(after[0].1 > before[0].1, "an applied update sets loaded_at: {before:?} {after:?}");
        assert_eq!(after[1..3], before[1..3], "rows not updated keep their loaded_at");
    }
    let loads = store.loaded_at().await;

    // A replay of everything, and a version of b as recent as the stored one
    // but with other values: nothing changes.
    let mut b_same_time = created[1].clone();
    b_same_time.mag = 7.0;
    send(&driver, &raw, &created).await;
    send(&driver, &raw, &updates).await;
    send(&driver, &raw, &[b_same_time]).await;
    caught_up(&driver).await;
    assert_stored(&store, &latest, "after the replay").await;
    assert_eq!(store.loaded_at().await, loads, "a replay touches no row");
    assert_eq!((metric(&app, ROWS), metric(&app, STALE)), (5.0, 10.0), "eight versions more changed nothing");

    // The worker stops; twenty revisions of d wait on the topic, in no order
    // (the latest in the middle), and a new worker takes them in large
    // batches that hold d several times.
    driver.stop_worker().await.unwrap();
    let d: Vec<Quake> = (0..20).map(|i| (i * 7) % 20).map(|i| quake("d", Action::Update, i, i as f64 * 0.25)).collect();
    send(&driver, &raw, &d).await;
    let (app2, driver2, _) = start(&store, broker).await;
    caught_up(&driver2).await;
    let d_latest = quake("d", Action::Update, 19, 19.0 * 0.25);
    assert_stored(&store, &[&a_revised, &created[1], &created[2], &d_latest, &e_revised], "after d").await;
    let (rows, stale) = (metric(&app2, ROWS), metric(&app2, STALE));
    assert_eq!(rows + stale, 20.0, "every version either changed the row or was stale ({rows} + {stale})");
    assert!((1.0..20.0).contains(&rows), "d's versions came in batches of several ({rows} rows changed)");
    driver2.stop().await.unwrap();
    drop(driver);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_postgres_each_quake_is_one_row_at_its_latest_revision() {
    let db = TestDatabase::named("quake_loader");
    let broker = db.name().to_owned();
    tokio::time::timeout(BOUND, newest_version_wins(Store::Postgres(db), &broker))
        .await
        .expect("the test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_the_embedded_database_each_quake_is_kept_at_its_latest_revision() {
    let store = Store::Embedded(Embedded::temporary().unwrap());
    let broker = format!("quake-loader-embedded-{}", std::process::id());
    tokio::time::timeout(BOUND, newest_version_wins(store, &broker)).await.expect("the test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_is_created_with_the_database_and_again_without_harm() {
    let db = TestDatabase::named("quake_schema");
    tokio::time::timeout(BOUND, async {
        for _ in 0..2 {
            let app = TestDriver::app("quake-schema");
            // The loader creates the schema before its first rows; here, at once.
            let Database::Postgres(pg) = loader::postgres(&app, &db.url()).await.unwrap() else { unreachable!() };
            tokio::time::timeout(WAIT, pg.schema_ready()).await.unwrap().unwrap();
        }
        let client = db.connect().await.unwrap();
        let sql = "SELECT column_name, data_type, is_nullable FROM information_schema.columns \
                   WHERE table_name = 'quakes' ORDER BY ordinal_position";
        let columns: Vec<(String, String, String)> =
            client.query(sql, &[]).await.unwrap().iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
        let nullable: Vec<&str> = columns.iter().filter(|c| c.2 == "YES").map(|c| c.0.as_str()).collect();
        assert_eq!(
            nullable,
            ["depth", "magtype", "flynn_region", "auth", "evtype", "source_id", "source_catalog", "action"]
        );
        assert!(columns.contains(&("time".into(), "timestamp with time zone".into(), "NO".into())), "{columns:?}");
        assert!(columns.contains(&("loaded_at".into(), "timestamp with time zone".into(), "NO".into())));
        let index: String = client
            .query_one("SELECT indexdef FROM pg_indexes WHERE indexname = 'quakes_time'", &[])
            .await
            .unwrap()
            .get(0);
        assert!(index.replace('"', "").contains("(time DESC)"), "{index}");
    })
    .await
    .expect("the test finished in time");
}
