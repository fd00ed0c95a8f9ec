//! processing and aggregation in process, on the memory transport: what they
//! make of good readings, and where bad ones go.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use stream_core::testing::TestDriver;
use strom_services::records::{RAW, RawReading, Temperature};
use strom_services::{aggregation, processing, topics};

const WAIT: Duration = Duration::from_secs(20);
const NOW: i64 = 1_700_000_000_500;

fn raw(topic: &str, payload: &str) -> RawReading {
    RawReading { mqtt_topic: topic.into(), payload: payload.into(), received_ms: NOW }
}

#[tokio::test]
async fn processing_converts_good_readings_and_dead_letters_bad_ones_at_once() {
    let app = TestDriver::app("processing");
    let (raw_topic, processed) = (topics::raw(&app), topics::processed(&app));
    processing::normalize(&app, &raw_topic, &processed);
    let driver = TestDriver::start(&app).await.unwrap();

    // (MQTT topic, payload, Ok((celsius, event time)) or Err(reason)), good and bad interleaved.
    type Case<'a> = (&'a str, &'a str, Result<(f64, i64), &'a str>);
    let cases: Vec<Case<'_>> = vec![
        ("/sensor1/temp", r#"{"timestamp": "1700000000.123", "value": "21"}"#, Ok((21.0, 1_700_000_000_123))),
        ("/sensor90/temp", "not json", Err("payload is not JSON")),
        ("/sensor2/temp", r#"{"timestamp": 1700000000, "value": 19.5}"#, Ok((19.5, 1_700_000_000_000))),
        ("/sensor91/temp", r#"{"timestamp": "1700000000"}"#, Err("payload has no value")),
        (
            "sensors/3/temperature",
            r#"{"sensor": 3, "temperature": 212, "unit": "F", "timestamp": 1700000000123}"#,
            Ok((100.0, 1_700_000_000_123)),
        ),
        ("/sensor92/temp", r#"{"value": "warm"}"#, Err("is not a number")),
        (
            "sensors/4/temperature",
            r#"{"sensor": 4, "temperature": "300.15", "unit": "K", "timestamp": "2023-11-14T22:13:20.250Z"}"#,
            Ok((27.0, 1_700_000_000_250)),
        ),
        ("sensors/93/temperature", r#"{"temperature": 21, "unit": "X"}"#, Err("unknown unit")),
        ("sensors/5/temperature", r#"{"temperature": 21.25}"#, Ok((21.25, NOW))),
        (
            "sensors/94/temperature",
            r#"{"temperature": 21, "timestamp": "1999-12-31T23:59:59Z"}"#,
            Err("before 2000-01-01"),
        ),
        ("sensors/95/temperature", r#"{"temperature": 21, "timestamp": 1800000000000}"#, Err("more than a day after")),
        (
            "sensors/6/temperature",
            r#"{"sensor": 6, "temperature": 68, "unit": "F", "timestamp": "1700000000.5"}"#,
            Ok((20.0, 1_700_000_000_500)),
        ),
        ("sensors/96/temperature", r#"{"sensor": 7, "temperature": 21}"#, Err("sensor number mismatch")),
        ("sensors/97/temperature", r#"{"temperature": -500}"#, Err("out of range")),
        ("sensors/98/temp", r#"{"temperature": 21}"#, Err("is neither sensors/<N>/temperature")),
        ("/sensor7/temp", r#"{"value": 22}"#, Ok((22.0, NOW))),
    ];
    for (topic, payload, _) in &cases {
        driver.send(&raw_topic, Some(&topic.to_string()), &raw(topic, payload)).await.unwrap();
    }
    let good = cases.iter().filter(|c| c.2.is_ok()).count();
    let bad = cases.len() - good;

    let out: HashMap<u32, Temperature> = driver
        .read(&processed, good, WAIT)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (*e.key().unwrap(), e.into_value()))
        .collect();
    let letters = driver.dead_letters(RAW, bad, WAIT).await.unwrap();
    assert_eq!(letters.len(), bad);
    for (topic, payload, expected) in &cases {
        match expected {
            Ok((celsius, ts)) => {
                let n = strom_services::sensors::sensor_of_topic(topic).unwrap();
                let t = &out[&n];
                assert!((t.value - celsius).abs() < 1e-9, "{payload}: {} != {celsius}", t.value);
                assert_eq!((t.timestamp_ms, t.received_ms), (*ts, NOW), "{payload}");
            }
            Err(reason) => {
                let letter = letters
                    .iter()
                    .find(|l| l.key.as_deref() == Some(topic.as_bytes()))
                    .unwrap_or_else(|| panic!("no dead letter for {topic}"));
                assert!(letter.error.contains(reason), "{payload}: {:?} does not say {reason:?}", letter.error);
                assert_eq!((letter.agent.as_str(), letter.kind.as_str()), ("normalize", "rejected"));
            }
        }
    }
    driver.wait_until(WAIT, async |d| d.caught_up(RAW).await).await.unwrap();
    // Dead-lettered at once: no event was handed to the handler twice.
    let metrics = app.metrics().encode();
    assert!(!metrics.lines().any(|l| l.starts_with("strom_events_retried_total") && !l.ends_with(" 0")), "{metrics}");
    driver.stop().await.unwrap();
}

#[tokio::test]
async fn aggregation_averages_the_last_ten_readings_of_each_sensor() {
    let app = TestDriver::builder_on(&format!("memory://aggregation-{}", std::process::id()), "aggregation")
        .table_store(stream_core::TableStore::Memory)
        .build()
        .unwrap();
    let (processed, averages) = (topics::processed(&app), topics::averages(&app));
    aggregation::average(&app, &processed, &averages);
    let driver = TestDriver::start(&app).await.unwrap();

    let mut sent: HashMap<u32, Vec<Temperature>> = HashMap::new();
    for i in 0..25i64 {
        for sensor in 1..=3u32 {
            let value = ((i * 37 + i64::from(sensor) * 11) % 23) as f64 * 0.5 - 3.0;
            let t = Temperature {
                sensor_num: sensor,
                value,
                timestamp_ms: NOW + i * 1000,
                received_ms: NOW + i * 1000 + 5,
            };
            driver.send(&processed, Some(&sensor), &t).await.unwrap();
            sent.entry(sensor).or_default().push(t);
        }
    }
    let out = driver.read(&averages, 75, WAIT).await.unwrap();
    for (sensor, readings) in &sent {
        let got: Vec<_> = out.iter().filter(|e| e.key() == Some(sensor)).map(|e| e.value().clone()).collect();
        assert_eq!(got.len(), readings.len());
        for (i, (average, reading)) in got.iter().zip(readings).enumerate() {
            let window = &readings[i.saturating_sub(9)..=i];
            let mean = window.iter().map(|t| t.value).sum::<f64>() / window.len() as f64;
            assert!((average.value - mean).abs() < 1e-9, "sensor {sensor} #{i}: {} != {mean}", average.value);
            assert_eq!((average.sensor_num, average.count), (*sensor, window.len() as u32));
            assert_eq!(average.timestamp_ms, reading.timestamp_ms);
        }
    }
    driver.stop().await.unwrap();
}
