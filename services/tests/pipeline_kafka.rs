//! The services as processes, as an operator runs them: Mosquitto on
//! 127.0.0.1:1883, the Kafka-protocol broker of `STROM_TEST_KAFKA`, PostgreSQL,
//! MQTT topics, client ids, Kafka topics and a database of the test's own;
//! collection and aggregation SIGKILLed mid-stream and restarted, no reading
//! lost, and the readings and averages served by the API from Postgres.

#![allow(clippy::unwrap_used)]

#[path = "../../examples/tests/common/mod.rs"]
mod common;
mod mqtt;
mod pg;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{Process, WAIT, kafka_url};
use stream_core::testing::TestDriver;
use strom_services::records::{AVERAGES, Average, PROCESSED, RAW, Temperature};
use strom_services::topics;

const MQTT: &str = "127.0.0.1:1883";
const BASE_MS: i64 = 1_750_000_000_000;

fn require_mosquitto() {
    if std::net::TcpStream::connect_timeout(&MQTT.parse().unwrap(), Duration::from_secs(2)).is_err() {
        panic!("no MQTT broker answers on {MQTT}: start Mosquitto (scripts/test-env.sh up)");
    }
}

/// One reading of round `round` of sensor `n` (1 to 4), in Celsius, and its MQTT message.
fn reading(prefix: &str, n: u32, round: i64) -> ((u32, i64, f64), (String, String)) {
    let ts = BASE_MS + round * 1000 + i64::from(n);
    let celsius = f64::from(n) * 10.0 + (round % 7) as f64 * 0.5;
    let message = match n {
        // the seed's form: strings, an integer-valued and a float-valued sensor
        1 | 3 => (
            format!("{prefix}/sensor{n}/temp"),
            format!(r#"{{"timestamp": "{}.{:03}", "value": "{celsius}"}}"#, ts / 1000, ts % 1000),
        ),
        2 => (
            format!("{prefix}sensors/2/temperature"),
            format!(
                r#"{{"sensor": 2, "temperature": {}, "unit": "F", "timestamp": {ts}}}"#,
                celsius * 9.0 / 5.0 + 32.0
            ),
        ),
        _ => {
            let rfc = chrono::DateTime::from_timestamp_millis(ts)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            (
                format!("{prefix}sensors/{n}/temperature"),
                format!(r#"{{"sensor": {n}, "temperature": {}, "unit": "K", "timestamp": "{rfc}"}}"#, celsius + 273.15),
            )
        }
    };
    ((n, ts, celsius), message)
}

async fn publish(messages: &[(String, Vec<u8>)]) {
    mqtt::publish(&format!("mqtt://{MQTT}"), messages).await;
}

async fn wait_metric(process: &Process, prefix: &str, value: f64) {
    let deadline = Instant::now() + WAIT;
    while process.metric(prefix) < value {
        assert!(Instant::now() < deadline, "{prefix} never reached {value}: {}", process.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_to_averages_with_collection_and_aggregation_killed() {
    let kafka = kafka_url();
    require_mosquitto();
    let app = TestDriver::app_on(&kafka, "pipeline");
    // Declared so that the observer knows them (the services create them).
    let _ = (topics::raw(&app), topics::processed(&app), topics::averages(&app));
    let driver = TestDriver::observe(&app);
    let tag = app.config().topic_prefix.trim_end_matches('-').to_owned();
    let mqtt_prefix = format!("strom-{tag}/");
    let client_id = format!("strom-{tag}-collection");
    let state = std::env::temp_dir().join(format!("strom-{tag}-aggregation"));
    let state_dir = state.to_string_lossy().into_owned();
    let kafka_env = [("STROM_KAFKA_SESSION_TIMEOUT_MS", "6000"), ("STROM_KAFKA_HEARTBEAT_INTERVAL_MS", "500")];
    let collection_env = [
        ("MQTT_URL", "mqtt://127.0.0.1:1883"),
        ("MQTT_TOPIC_PREFIX", mqtt_prefix.as_str()),
        ("MQTT_CLIENT_ID", client_id.as_str()),
    ];
    let aggregation_env = [kafka_env[0], kafka_env[1], ("STROM_STATE_DIR", state_dir.as_str())];

    let db = pg::TestDb::new("pipeline");
    let db_url = db.url();
    let database_env = [("DATABASE_URL", db_url.as_str())];
    let loader = Process::start(env!("CARGO_BIN_EXE_db-loader"), &app, &database_env);
    let api = Process::start(env!("CARGO_BIN_EXE_api-gateway"), &app, &database_env);
    let processing = Process::start(env!("CARGO_BIN_EXE_processing"), &app, &kafka_env);
    let mut aggregation = Process::start(env!("CARGO_BIN_EXE_aggregation"), &app, &aggregation_env);
    let mut collection = Process::start(env!("CARGO_BIN_EXE_collection"), &app, &collection_env);
    processing.wait_ready().await;
    aggregation.wait_ready().await;
    wait_metric(&collection, "strom_mqtt_connected", 1.0).await;

    let mut expected = Vec::new();
    let mut round = |rounds: std::ops::Range<i64>| {
        let mut messages = Vec::new();
        for r in rounds {
            for n in 1..=4 {
                let (reading, (topic, payload)) = reading(&mqtt_prefix, n, r);
                expected.push(reading);
                messages.push((topic, payload.into_bytes()));
            }
        }
        messages
    };
    // The seed's exact message, a payload collection rejects and one processing rejects.
    let mut first =
        vec![(format!("{mqtt_prefix}/sensor5/temp"), br#"{"timestamp": "1700000000.123", "value": "21"}"#.to_vec())];
    first.push((format!("{mqtt_prefix}sensors/9/temperature"), vec![0xff, 0xfe, 0x00]));
    first.push((format!("{mqtt_prefix}/sensor9/temp"), b"not json".to_vec()));
    first.extend(round(0..10));
    publish(&first).await;
    let phase2 = round(10..20);
    let phase3 = round(20..30);
    let phase4 = round(30..40);

    // collection dies with messages in flight; what is published meanwhile waits in its session.
    wait_metric(&collection, "strom_mqtt_messages_received_total", 10.0).await;
    collection.kill();
    publish(&phase2).await;
    collection = Process::start(env!("CARGO_BIN_EXE_collection"), &app, &collection_env);

    // aggregation dies mid-stream and comes back with its store and changelog.
    let (half, rest) = phase3.split_at(20);
    publish(half).await;
    wait_metric(&aggregation, "strom_events_processed_total", 20.0).await;
    aggregation.kill();
    publish(rest).await;
    aggregation = Process::start(env!("CARGO_BIN_EXE_aggregation"), &app, &aggregation_env);
    aggregation.wait_ready().await;
    publish(&phase4).await;

    // Every reading reaches sensors.processed (at least once), converted.
    let want: BTreeSet<(u32, i64)> =
        expected.iter().map(|(n, ts, _)| (*n, *ts)).chain([(5, 1_700_000_000_123)]).collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    let got: BTreeMap<(u32, i64), f64> = loop {
        let got: BTreeMap<(u32, i64), f64> = driver
            .messages(PROCESSED)
            .await
            .unwrap()
            .iter()
            .map(|m| serde_json::from_slice(m.value.as_deref().unwrap()).unwrap())
            .map(|t: Temperature| ((t.sensor_num, t.timestamp_ms), t.value))
            .collect();
        if want.iter().all(|k| got.contains_key(k)) || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let missing: Vec<_> = want.iter().filter(|k| !got.contains_key(k)).collect();
    assert!(
        missing.is_empty(),
        "lost readings {missing:?}\ncollection: {}\nprocessing: {}",
        collection.log(),
        processing.log()
    );
    for (n, ts, celsius) in &expected {
        assert!((got[&(*n, *ts)] - celsius).abs() < 1e-6, "sensor {n} at {ts}: {} != {celsius}", got[&(*n, *ts)]);
    }
    assert_eq!(got[&(5, 1_700_000_000_123)], 21.0);

    // Every reading has its average; the last one of each sensor is the mean of its last 10.
    let deadline = Instant::now() + Duration::from_secs(90);
    let last: BTreeMap<u32, Average> = loop {
        let all: Vec<Average> = driver
            .messages(AVERAGES)
            .await
            .unwrap()
            .iter()
            .map(|m| serde_json::from_slice(m.value.as_deref().unwrap()).unwrap())
            .collect();
        let seen: BTreeSet<(u32, i64)> = all.iter().map(|a| (a.sensor_num, a.timestamp_ms)).collect();
        if want.is_subset(&seen) || Instant::now() > deadline {
            assert!(
                want.is_subset(&seen),
                "averages missing for {:?}\n{}",
                want.difference(&seen).collect::<Vec<_>>(),
                aggregation.log()
            );
            break all.into_iter().map(|a| (a.sensor_num, a)).collect();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for n in 1..=4u32 {
        let values: Vec<f64> = expected.iter().filter(|r| r.0 == n).map(|r| r.2).collect();
        let mean = values[values.len() - 10..].iter().sum::<f64>() / 10.0;
        assert!((last[&n].value - mean).abs() < 1e-6, "sensor {n}: {:?} != {mean}", last[&n]);
        assert_eq!(last[&n].count, 10);
    }
    assert_eq!(last[&5].value, 21.0);

    // The two bad payloads, each dead-lettered by the stage that rejected it, with the reason.
    let letters = driver.dead_letters(RAW, 2, WAIT).await.unwrap();
    assert!(letters.iter().any(|l| l.error.contains("not UTF-8")), "{letters:?}");
    assert!(letters.iter().any(|l| l.error.contains("payload is not JSON")), "{letters:?}");

    // Through db-loader into Postgres, one row per reading, and out of the API
    // in the seed's shape, newest first.
    let rows = db.wait_rows("temperature", want.len()).await;
    assert_eq!(rows.len(), want.len(), "one temperature row per reading: {}", loader.log());
    let averages = db.wait_rows("average", want.len()).await;
    assert_eq!(averages.len(), want.len(), "one average row per reading: {}", loader.log());
    let range = format!("timestamp_start={}&timestamp_end={}", BASE_MS / 1000 - 1, BASE_MS / 1000 + 60);
    for n in 1..=4u32 {
        let (status, body) = api.get(&format!("/temperature?sensor_num={n}&{range}"));
        assert_eq!(status, 200, "{body}");
        let served: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
        let mut readings: Vec<&(u32, i64, f64)> = expected.iter().filter(|r| r.0 == n).collect();
        readings.sort_by_key(|r| std::cmp::Reverse(r.1));
        assert_eq!(served.len(), readings.len(), "sensor {n}: {body}");
        for (s, (_, ts, celsius)) in served.iter().zip(readings) {
            assert_eq!(s["sensor_num"], n);
            assert!((s["timestamp"].as_f64().unwrap() - *ts as f64 / 1000.0).abs() < 1e-6, "{s}");
            assert!((s["value"].as_f64().unwrap() - celsius).abs() < 1e-6, "{s}");
        }
        let (status, body) = api.get(&format!("/average?sensor_num={n}&{range}"));
        assert_eq!(status, 200, "{body}");
        let newest: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
        assert!((newest[0]["value"].as_f64().unwrap() - last[&n].value).abs() < 1e-6, "{body}");
        let (status, body) = api.get(&format!("/temperature_latest?sensor_num={n}"));
        assert_eq!(status, 200, "{body}");
        let latest: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
        assert_eq!(latest.len(), 1, "{body}");
    }
    let (status, body) = api.get("/temperature?sensor_num=one");
    assert_eq!(status, 422, "{body}");

    for process in [collection, processing, aggregation, loader, api] {
        let (code, _, log) = process.terminate().await;
        assert_eq!(code, 0, "{log}");
    }
    let _ = std::fs::remove_dir_all(&state);
}
