//! db-loader and api-gateway against a real PostgreSQL: records on the topics
//! become exact rows, replays add none, and the REST API answers as the
//! design says; then the db-loader binary on a real broker, killed mid-stream.
//!
//! PostgreSQL must answer on `STROM_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432`, trust auth), the broker on
//! `STROM_TEST_KAFKA` (default 127.0.0.1:9092). Every test works in a
//! database of its own, dropped at the end, and under a topic prefix of its own.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use stream_core::prelude::*;
use stream_core::testing::TestDriver;
use strom_services::api::{self, Source};
use strom_services::loader::{self, Database};
use strom_services::records::{AVERAGES, Average, PARTITIONS, PROCESSED, Temperature};
use strom_services::topics;

// The process helper of the examples' tests: a worker binary as an operator runs it.
#[path = "../../examples/tests/common/mod.rs"]
mod common;
mod pg;

use pg::{TestDb, unique};

/// How long one test may take, all of it.
const BOUND: Duration = Duration::from_secs(150);
/// How long a test waits for one thing.
const WAIT: Duration = Duration::from_secs(60);

// ---- records, HTTP ----------------------------------------------------------

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// `n` readings of each of `sensors`, a second apart from `base_ms` (plus a
/// few ms, so times have decimals), with the averages aggregation would send.
fn readings(sensors: &[u32], n: i64, base_ms: i64) -> (Vec<Temperature>, Vec<Average>) {
    let (mut temperatures, mut averages) = (Vec::new(), Vec::new());
    for &sensor in sensors {
        for i in 0..n {
            let timestamp_ms = base_ms + i * 1000 + 123;
            let value = f64::from(sensor) + i as f64 * 0.25;
            temperatures.push(Temperature { sensor_num: sensor, value, timestamp_ms, received_ms: timestamp_ms + 7 });
            averages.push(Average {
                sensor_num: sensor,
                value: value - 0.125,
                timestamp_ms,
                count: (i + 1).min(10) as u32,
            });
        }
    }
    (temperatures, averages)
}

/// Epoch milliseconds as the API writes them.
fn seconds(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

fn temperature_rows(records: &[Temperature]) -> BTreeMap<(i64, i64), (f64, i64)> {
    records.iter().map(|t| ((i64::from(t.sensor_num), t.timestamp_ms), (t.value, t.received_ms))).collect()
}

fn average_rows(records: &[Average]) -> BTreeMap<(i64, i64), (f64, i64)> {
    records.iter().map(|a| ((i64::from(a.sensor_num), a.timestamp_ms), (a.value, i64::from(a.count)))).collect()
}

/// A response: status, content type, body.
struct Response {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

impl Response {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `GET path` over HTTP/1.0.
fn get(addr: SocketAddr, path: &str) -> Response {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete response");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let content_type = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type:").map(|v| v.trim().to_owned()))
        .unwrap_or_default();
    Response { status, content_type, body: raw[split + 4..].to_vec() }
}

/// A GET on a blocking thread, so the worker in this runtime can answer.
async fn fetch(addr: SocketAddr, path: &str) -> Response {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || get(addr, &path)).await.unwrap()
}

/// The sum of the app's metric lines that start with `prefix`.
fn metric(app: &App, prefix: &str) -> f64 {
    let text = app.metrics().encode();
    text.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

// ---- db-loader and api-gateway in one worker, on the memory transport -------

struct Loaded {
    app: App,
    driver: TestDriver,
    processed: Topic<u32, Temperature>,
    averages: Topic<u32, Average>,
    web: SocketAddr,
}

/// A worker with db-loader's agents and api-gateway's routes, on `db`.
async fn start(db: &TestDb) -> Loaded {
    let app = TestDriver::builder_on(&format!("memory://{}", db.name()), "db-loader").web_port(0).build().unwrap();
    let processed = topics::processed(&app);
    let averages = topics::averages(&app);
    let pg = loader::postgres(&app, &db.url()).await.unwrap();
    // The schema is created in the background; the API's tests start once it is.
    if let Database::Postgres(p) = &pg {
        tokio::time::timeout(WAIT, p.schema_ready()).await.unwrap().unwrap();
    }
    loader::load_all(&app, &pg);
    app.routes(api::router(&app, Source::Postgres(&db.url())).unwrap());
    let driver = TestDriver::start(&app).await.unwrap();
    let web = driver.worker().and_then(|w| w.web_addr()).unwrap();
    let web = SocketAddr::from(([127, 0, 0, 1], web.port()));
    Loaded { app, driver, processed, averages, web }
}

impl Loaded {
    async fn send(&self, temperatures: &[Temperature], averages: &[Average]) {
        for t in temperatures {
            self.driver.send(&self.processed, Some(&t.sensor_num), t).await.unwrap();
        }
        for a in averages {
            self.driver.send(&self.averages, Some(&a.sensor_num), a).await.unwrap();
        }
    }

    async fn caught_up(&self) {
        self.driver
            .wait_until(WAIT, async |d| Ok(d.caught_up(PROCESSED).await? && d.caught_up(AVERAGES).await?))
            .await
            .unwrap();
    }
}

async fn bounded(body: impl Future<Output = ()>) {
    tokio::time::timeout(BOUND, body).await.expect("the test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_become_exact_rows_and_a_replay_adds_none() {
    let db = TestDb::new("loader_rows");
    bounded(async {
        let w = start(&db).await;
        let (temperatures, averages) = readings(&[1, 2, 3], 40, now_ms() - 60_000);
        w.send(&temperatures, &averages).await;
        assert_eq!(db.wait_rows("temperature", 120).await, temperature_rows(&temperatures));
        assert_eq!(db.wait_rows("average", 120).await, average_rows(&averages));
        w.caught_up().await;

        // A replay: the same records again, and a recomputed average for a known reading.
        let mut again = averages.clone();
        again[5].value += 1.0;
        w.send(&temperatures, &again).await;
        w.caught_up().await;
        assert_eq!(db.rows("temperature").await, temperature_rows(&temperatures), "no row added by the replay");
        assert_eq!(db.rows("average").await, average_rows(&averages), "the first average written stays");

        assert_eq!(metric(&w.app, r#"strom_rows_loaded_total{table="temperature"}"#), 120.0);
        assert_eq!(metric(&w.app, r#"strom_rows_loaded_total{table="average"}"#), 120.0);
        let observed = metric(&w.app, "strom_sensor_to_db_latency_seconds_count");
        assert!(observed >= 240.0, "every loaded row's latency is observed ({observed})");
        let mean = metric(&w.app, "strom_sensor_to_db_latency_seconds_sum") / observed;
        assert!((15.0..120.0).contains(&mean), "the readings were 20 to 60 s old: {mean} s on average");
        w.driver.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_in_the_seeds_shape_newest_first_within_the_range() {
    let db = TestDb::new("api_values");
    bounded(async {
        let w = start(&db).await;
        // Before anything was loaded: empty lists, not errors.
        let r = fetch(w.web, "/temperature_latest?sensor_num=1").await;
        assert_eq!((r.status, r.json()), (200, json!([])));

        let base_ms = 1_700_000_000_000;
        let (temperatures, averages) = readings(&[1, 2], 10, base_ms);
        w.send(&temperatures, &averages).await;
        db.wait_rows("temperature", 20).await;
        db.wait_rows("average", 20).await;

        // Sensor 1's readings 3..=6 (at ...003.123 to ...006.123): inclusive bounds, decimals.
        let r = fetch(w.web, "/temperature?sensor_num=1&timestamp_start=1700000003.123&timestamp_end=1700000006.2").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.content_type.starts_with("application/json"), "{}", r.content_type);
        let expected: Vec<Value> = (3..=6)
            .rev()
            .map(|i| json!({"timestamp": seconds(base_ms + i * 1000 + 123), "sensor_num": 1, "value": 1.0 + i as f64 * 0.25}))
            .collect();
        assert_eq!(r.json(), Value::Array(expected));
        assert!(r.text().starts_with(r#"[{"timestamp":1700000006.123,"sensor_num":1,"value":2.5}"#), "{}", r.text());

        let r = fetch(w.web, "/average?sensor_num=2&timestamp_start=1700000000&timestamp_end=1700000001.123").await;
        let expected = json!([
            {"timestamp": seconds(1_700_000_001_123), "sensor_num": 2, "value": 2.125},
            {"timestamp": seconds(1_700_000_000_123), "sensor_num": 2, "value": 1.875},
        ]);
        assert_eq!((r.status, r.json()), (200, expected));
        let r = fetch(w.web, "/average?sensor_num=2&timestamp_start=1700000000.124&timestamp_end=1700000001.122").await;
        assert_eq!((r.status, r.json()), (200, json!([])), "both bounds are exact to the millisecond");
        let r = fetch(w.web, "/temperature?sensor_num=1&timestamp_start=0&timestamp_end=2000000000").await;
        assert_eq!(r.json().as_array().map(Vec::len), Some(10));

        let r = fetch(w.web, "/temperature_latest?sensor_num=2").await;
        assert_eq!((r.status, r.json()), (200, json!([{"timestamp": seconds(1_700_000_009_123), "sensor_num": 2, "value": 4.25}])));
        let r = fetch(w.web, "/temperature_latest?sensor_num=77").await;
        assert_eq!((r.status, r.json()), (200, json!([])), "a sensor never seen");

        let age = metric(&w.app, "strom_api_latest_value_age_seconds");
        let expected_age = (now_ms() - 1_700_000_009_123) as f64 / 1000.0;
        assert!((age - expected_age).abs() < 60.0, "age of the latest value served: {age}, not {expected_age}");
        assert_eq!(metric(&w.app, r#"strom_api_requests_total{endpoint="/temperature_latest",status="200"}"#), 3.0);
        assert_eq!(metric(&w.app, r#"strom_api_requests_total{endpoint="/average",status="200"}"#), 2.0);
        w.driver.stop().await.unwrap();
    })
    .await;
}

/// An API on a database that cannot be reached: parameters are still checked first.
async fn api_without_database() -> (App, TestDriver, SocketAddr) {
    let app =
        TestDriver::builder_on(&format!("memory://{}", unique("api")), "api-gateway").web_port(0).build().unwrap();
    // Nothing listens on port 1.
    app.routes(api::router(&app, Source::Postgres("postgres://postgres@127.0.0.1:1/strom?connect_timeout=2")).unwrap());
    let driver = TestDriver::start(&app).await.unwrap();
    let port = driver.worker().and_then(|w| w.web_addr()).unwrap().port();
    (app, driver, SocketAddr::from(([127, 0, 0, 1], port)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_are_422_and_an_unreachable_database_503_each_with_a_json_body() {
    bounded(async {
        let (app, driver, web) = api_without_database().await;
        let bad = [
            ("/temperature", "sensor_num"),
            ("/temperature?sensor_num=1&timestamp_start=1", "timestamp_end"),
            ("/temperature?sensor_num=abc&timestamp_start=1&timestamp_end=2", "sensor_num"),
            ("/temperature?sensor_num=-1&timestamp_start=1&timestamp_end=2", "sensor_num"),
            ("/temperature?sensor_num=1.5&timestamp_start=1&timestamp_end=2", "sensor_num"),
            ("/average?sensor_num=1&timestamp_start=yesterday&timestamp_end=2", "timestamp_start"),
            ("/average?sensor_num=1&timestamp_start=1&timestamp_end=NaN", "timestamp_end"),
            ("/average?sensor_num=1&timestamp_start=1&timestamp_end=inf", "timestamp_end"),
            ("/average?sensor_num=1&timestamp_start=1e300&timestamp_end=2", "timestamp_start"),
            ("/average?sensor_num=1&timestamp_start=1700000002&timestamp_end=1700000001", "timestamp_end"),
            ("/temperature_latest", "sensor_num"),
            ("/temperature_latest?sensor_num=", "sensor_num"),
            ("/temperature_latest?sensor_num=99999999999", "sensor_num"),
        ];
        for (path, param) in bad {
            let r = fetch(web, path).await;
            assert_eq!(r.status, 422, "{path}: {}", r.text());
            assert!(r.content_type.starts_with("application/json"), "{path}: {}", r.content_type);
            let detail = r.json()["detail"].clone();
            let locs: Vec<&Value> = detail.as_array().unwrap().iter().map(|d| &d["loc"]).collect();
            assert!(locs.contains(&&json!(["query", param])), "{path}: {detail}");
        }

        for path in ["/temperature?sensor_num=1&timestamp_start=1&timestamp_end=2", "/temperature_latest?sensor_num=1"]
        {
            let r = fetch(web, path).await;
            assert_eq!(r.status, 503, "{path}: {}", r.text());
            assert!(r.json()["detail"].is_string(), "{}", r.text());
        }
        assert_eq!(metric(&app, r#"strom_api_requests_total{endpoint="/temperature",status="422"}"#), 5.0);
        assert_eq!(metric(&app, r#"strom_api_requests_total{endpoint="/temperature",status="503"}"#), 1.0);
        driver.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_and_the_docs_are_served_from_the_binary() {
    bounded(async {
        let (_app, driver, web) = api_without_database().await;
        let r = fetch(web, "/openapi.json").await;
        assert_eq!(r.status, 200);
        let doc = r.json();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
        assert_eq!(paths, ["/average", "/temperature", "/temperature_latest"]);
        let params = &doc["paths"]["/temperature"]["get"]["parameters"];
        let names: Vec<&str> = params.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["sensor_num", "timestamp_start", "timestamp_end"]);

        let r = fetch(web, "/docs").await;
        assert_eq!(r.status, 200);
        assert!(r.content_type.starts_with("text/html"), "{}", r.content_type);
        let html = r.text();
        assert!(!html.contains("http://") && !html.contains("https://"), "no other host: {html}");
        let assets = regex::Regex::new(r#"(?:src|href)="([^"]+)""#).unwrap();
        let linked: Vec<&str> = assets.captures_iter(&html).map(|c| c.get(1).unwrap().as_str()).collect();
        assert_eq!(linked, ["/docs/swagger-ui.css", "/docs/swagger-ui-bundle.js"]);
        assert!(html.contains(r#"url: "/openapi.json""#));
        for (path, kind, marker) in [
            ("/docs/swagger-ui.css", "text/css", ".swagger-ui"),
            ("/docs/swagger-ui-bundle.js", "text/javascript", "SwaggerUIBundle"),
        ] {
            let r = fetch(web, path).await;
            assert_eq!(r.status, 200, "{path}");
            assert!(r.content_type.starts_with(kind), "{path}: {}", r.content_type);
            assert!(r.body.len() > 100_000 && r.text().contains(marker), "{path}");
        }
        driver.stop().await.unwrap();
    })
    .await;
}

// ---- the db-loader binary on a real broker ----------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loader_killed_mid_stream_and_restarted_leaves_every_row_once() {
    let db = TestDb::new("loader_kill");
    bounded(async {
        // The observer's app id is the loader's, so `caught_up` reads the loader's group.
        let app = TestDriver::app_on(&common::kafka_url(), "db-loader");
        let processed = app.topic::<u32, Temperature>(PROCESSED).partitions(PARTITIONS);
        let averages = app.topic::<u32, Average>(AVERAGES).partitions(PARTITIONS);
        let driver = TestDriver::observe(&app);
        let url = db.url();
        // A short session, so the group forgets the killed member soon.
        let env = [
            ("DATABASE_URL", url.as_str()),
            ("STROM_KAFKA_SESSION_TIMEOUT_MS", "6000"),
            ("STROM_KAFKA_HEARTBEAT_INTERVAL_MS", "500"),
        ];
        let bin = env!("CARGO_BIN_EXE_db-loader");
        let send = async |temperatures: &[Temperature], averages_: &[Average]| {
            let mut receipts = Vec::new();
            for t in temperatures {
                receipts.push(processed.send_record(t).await.unwrap());
            }
            for a in averages_ {
                receipts.push(averages.send_record(a).await.unwrap());
            }
            for r in receipts {
                r.await.unwrap();
            }
        };

        let loader = common::Process::start(bin, &app, &env);
        loader.wait_ready().await;
        let (temperatures, avgs) = readings(&(0..20).collect::<Vec<_>>(), 500, now_ms() - 600_000);
        let (first, rest) = (temperatures.len() / 2, temperatures.len());
        send(&temperatures[..first], &avgs[..first]).await;
        let deadline = Instant::now() + WAIT;
        while loader.metric("strom_rows_loaded_total") < 1_000.0 {
            assert!(Instant::now() < deadline, "no progress: {}", loader.log());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        loader.kill();
        send(&temperatures[first..rest], &avgs[first..rest]).await;
        // Restart once the killed member's session expired (see relay_kafka.rs).
        tokio::time::sleep(Duration::from_secs(7)).await;
        let loader = common::Process::start(bin, &app, &env);
        loader.wait_ready().await;

        assert_eq!(db.wait_rows("temperature", rest).await, temperature_rows(&temperatures), "{}", loader.log());
        assert_eq!(db.wait_rows("average", rest).await, average_rows(&avgs));
        driver
            .wait_until(WAIT, async |d| Ok(d.caught_up(PROCESSED).await? && d.caught_up(AVERAGES).await?))
            .await
            .unwrap();
        let (code, _, log) = loader.terminate().await;
        assert_eq!(code, 0, "{log}");
    })
    .await;
}
