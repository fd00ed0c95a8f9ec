//! The one-command demo (`strom-demo`) as a newcomer runs it: nothing outside
//! the process. The earthquake pipeline replays the shipped recording
//! (`QUAKE_REPLAY`) and its map serves every event; the simulated sensors'
//! data reaches the API; readings
//! published by a real MQTT client to its embedded MQTT broker, in both
//! forms and with a bad one among them, come out of the API in Celsius with
//! their averages; the docs are served; SIGTERM stops it cleanly, with the
//! rows on disk.

#![allow(clippy::unwrap_used)]

#[path = "../../examples/tests/common/mod.rs"]
mod common;
mod mqtt;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Process, WAIT, http_get};
use serde_json::Value;
use stream_core::App;
use strom_services::embedded::Embedded;
use strom_services::quake::emsc::{Frame, Recording};
use strom_services::quake::records::Quake;

/// The API's answer to `path`, as JSON, once it is 200 and `done` holds.
async fn wait_api(demo: &Process, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = demo.get(path);
        if status == 200
            && let Ok(json) = serde_json::from_str::<Value>(&body)
            && done(&json)
        {
            return json;
        }
        assert!(Instant::now() < deadline, "GET {path}: {status} {body}\n{}", demo.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The recording the README's demo replays.
const RECORDING: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/quakes/recording.jsonl");

/// The events of the recording at their newest versions, with the times the
/// demo's replay gives them (rebased to now: only their order matters here).
fn newest_events() -> BTreeMap<String, Quake> {
    let recording = Recording::load(RECORDING).unwrap();
    let mut newest: BTreeMap<String, Quake> = BTreeMap::new();
    for recorded in &recording.frames {
        let Frame::Text(text) = &recorded.frame else { continue };
        let Ok(q) = Quake::from_emsc(text) else { continue };
        if newest.get(&q.unid).is_none_or(|held| q.supersedes(held)) {
            newest.insert(q.unid.clone(), q);
        }
    }
    newest
}

/// The HTTP port of the demo's service `app`, from its log (each worker logs
/// its metrics address, then that it started).
fn port_of(demo: &Process, app: &str) -> u16 {
    let log = demo.log();
    let mut port = None;
    for line in log.lines() {
        if let Some(rest) = line.split("metrics at http://").nth(1) {
            port = rest.split("/metrics").next().and_then(|a| a.rsplit(':').next()).and_then(|p| p.parse().ok());
        }
        if line.contains(&format!("worker started app={app} ")) {
            return port.unwrap_or_else(|| panic!("{app} logged no HTTP address: {log}"));
        }
    }
    panic!("{app} did not start: {log}")
}

async fn wait_get(port: u16, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = http_get(port, path);
        if status == 200
            && let Ok(json) = serde_json::from_str::<Value>(&body)
            && done(&json)
        {
            return json;
        }
        assert!(Instant::now() < deadline, "GET :{port}{path}: {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The URL of the MQTT broker the demo started, from its log.
fn mqtt_url(demo: &Process) -> String {
    let log = demo.log();
    let at = log.find("mqtt://127.0.0.1:").unwrap_or_else(|| panic!("no MQTT URL in the log: {log}"));
    let port: String = log[at + "mqtt://127.0.0.1:".len()..].chars().take_while(char::is_ascii_digit).collect();
    format!("mqtt://127.0.0.1:{port}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_the_whole_pipeline_in_one_process() {
    let state = std::env::temp_dir().join(format!("strom-demo-test-{}", std::process::id()));
    let state_dir = state.to_str().unwrap();
    // Process::start takes the broker from an app: the demo's default.
    let on = App::builder("demo-test").broker("memory://").without_web().build().unwrap();
    let env = [
        ("STROM_STATE_DIR", state_dir),
        // Nothing outside the process, whatever the test's environment holds.
        ("DATABASE_URL", ""),
        ("MQTT_URL", ""),
        ("MQTT_TOPIC_PREFIX", ""),
        ("SIMULATOR_SENSORS", "3"),
        ("SIMULATOR_RATE", "5"),
        ("QUAKE_REPLAY", RECORDING),
        ("QUAKE_REPLAY_SPEED", "0"),
    ];
    // The first HTTP port the demo logs is the API's.
    let demo = Process::start(env!("CARGO_BIN_EXE_strom-demo"), &on, &env);

    // The simulated sensors' readings flow to the API.
    wait_api(&demo, "/temperature_latest?sensor_num=1", |v| v.as_array().is_some_and(|a| a.len() == 1)).await;

    // Sensors of the test's own publish to the embedded MQTT broker: the
    // seed's exact form, the richer form in Fahrenheit, and garbage between them.
    let now_s = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let mut messages = Vec::new();
    for i in 0..12_i64 {
        let seed = format!(r#"{{"timestamp": "{}.250", "value": "{}"}}"#, now_s - 20 + i, 20 + i);
        messages.push(("/sensor4242/temp".to_owned(), seed.into_bytes()));
        messages.push(("/sensor4242/temp".to_owned(), b"not json at all".to_vec()));
    }
    let richer = format!(r#"{{"sensor": 4243, "temperature": 212, "unit": "F", "timestamp": {}}}"#, now_s * 1000);
    messages.push(("sensors/4243/temperature".to_owned(), richer.into_bytes()));
    mqtt::publish(&mqtt_url(&demo), &messages).await;

    let latest =
        wait_api(&demo, "/temperature_latest?sensor_num=4243", |v| v.as_array().is_some_and(|a| a.len() == 1)).await;
    assert_eq!(latest[0]["value"], 100.0, "212 °F is 100 °C");
    assert_eq!(latest[0]["timestamp"].as_f64(), Some(now_s as f64));

    let range = format!("sensor_num=4242&timestamp_start={}&timestamp_end={}", now_s - 100, now_s);
    let readings =
        wait_api(&demo, &format!("/temperature?{range}"), |v| v.as_array().is_some_and(|a| a.len() == 12)).await;
    assert_eq!(readings[0]["value"], 31.0, "newest first");
    assert_eq!(readings[0]["timestamp"].as_f64(), Some((now_s - 9) as f64 + 0.25));
    assert_eq!(readings[11]["value"], 20.0);
    // The newest average is the mean of the last 10 readings: 22 to 31.
    let averages = wait_api(&demo, &format!("/average?{range}"), |v| v.as_array().is_some_and(|a| a.len() == 12)).await;
    assert_eq!(averages[0]["value"], 26.5);
    assert_eq!(averages[11]["value"], 20.0);

    // Bad parameters get a 422; the docs are served from the binary.
    let (status, body) = demo.get("/temperature?sensor_num=abc");
    assert_eq!(status, 422, "{body}");
    let (status, body) = demo.get("/docs");
    assert_eq!(status, 200);
    assert!(body.contains("swagger-ui"), "{body}");
    assert!(demo.get("/openapi.json").1.contains("/temperature_latest"));
    assert!(demo.metric("strom_api_requests_total") >= 5.0);

    // The earthquake map serves the replayed recording: every event once, at
    // its newest version, newest first, with the API's filters.
    let map = port_of(&demo, "quake-map");
    let expected = newest_events();
    let quakes = wait_get(map, "/api/quakes?limit=5000", |v| {
        v["features"].as_array().is_some_and(|f| f.len() == expected.len())
    })
    .await;
    let features = quakes["features"].as_array().unwrap();
    for feature in features {
        let newest = &expected[feature["id"].as_str().unwrap()];
        assert_eq!(feature["properties"]["mag"], newest.mag, "{feature}");
    }
    let times: Vec<&str> = features.iter().map(|f| f["properties"]["time"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first: {times:?}");
    let big = wait_get(map, "/api/quakes?min_mag=5&limit=5000", |_| true).await;
    assert_eq!(big["features"].as_array().unwrap().len(), expected.values().filter(|q| q.mag >= 5.0).count());
    assert_eq!(http_get(map, "/api/quakes?limit=nope").0, 422);
    let (status, page) = http_get(map, "/");
    assert_eq!(status, 200);
    assert!(page.contains("leaflet"), "{page}");

    let (code, _, log) = demo.terminate().await;
    assert_eq!(code, 0, "{log}");
    for service in [
        "sensor-simulator",
        "collection",
        "processing",
        "aggregation",
        "db-loader",
        "api-gateway",
        "quake-source",
        "quake-loader",
        "quake-map",
    ] {
        assert!(log.contains(&format!("worker stopped app={service}")), "{service}: {log}");
    }
    // The rows are on disk, in the embedded database.
    let db = Embedded::open(&state.join("database")).unwrap();
    assert_eq!(db.range("temperature", 4242, 0, i64::MAX).unwrap().len(), 12);
    assert_eq!(db.latest("average", 4242).unwrap().map(|(_, v)| v), Some(26.5));
    let first = expected.values().next().unwrap();
    assert_eq!(db.quake(&first.unid).unwrap().map(|q| q.mag), Some(first.mag));
    drop(db);
    std::fs::remove_dir_all(&state).unwrap();
}
