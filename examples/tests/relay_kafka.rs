//! `relay` as an operator runs it: worker processes on a real Kafka-protocol
//! broker, fed and watched from outside, killed, stopped and scaled.
//!
//! Each test gives its processes a topic prefix of its own, so the tests share
//! the broker and run in parallel. The broker is `STROM_TEST_KAFKA` (default
//! 127.0.0.1:9092); `scripts/test-env.sh up` starts one.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Map, Value, json};
use stream_core::App;
use stream_core::testing::TestDriver;
use strom_examples::relay::Message;

mod common;
use common::{Process, WAIT, kafka_url};

/// The outside view of a relay deployment: its topics, under a prefix of its own.
struct Deployment {
    app: App,
    driver: TestDriver,
    input: stream_core::Topic<Bytes, Message>,
}

impl Deployment {
    fn new() -> Deployment {
        // The observer's app id is the relay's, so `committed` reads the relay's group.
        let app = TestDriver::app_on(&kafka_url(), "relay");
        let input = app.topic::<Bytes, Message>("relay.in").partitions(4);
        app.topic::<Bytes, Message>("relay.out").partitions(4);
        let driver = TestDriver::observe(&app);
        Deployment { app, driver, input }
    }

    /// Starts a relay worker process.
    fn worker(&self, extra: &[(&str, &str)]) -> Process {
        Process::start(env!("CARGO_BIN_EXE_relay"), &self.app, extra)
    }

    /// Sends values with keys `k<id % 13>`, not waiting for each acknowledgement.
    async fn send(&self, values: impl IntoIterator<Item = Value>) {
        let mut receipts = Vec::new();
        for value in values {
            let Value::Object(map) = value else { panic!("objects only") };
            let key = Bytes::from(format!("k{}", map.get("id").and_then(Value::as_i64).unwrap_or(0) % 13));
            receipts.push(self.input.send(&key, &Message(map)).await.unwrap());
        }
        for r in receipts {
            r.await.unwrap();
        }
    }

    async fn send_raw(&self, value: &[u8]) {
        self.driver.send_raw("relay.in", Some(b"bad"), value).await.unwrap();
    }

    /// The ids in `relay.out`, with how often each appears.
    async fn output_ids(&self) -> BTreeMap<i64, usize> {
        let mut ids = BTreeMap::new();
        for m in self.driver.messages("relay.out").await.unwrap() {
            let v: Map<String, Value> = serde_json::from_slice(m.value.as_deref().unwrap()).unwrap();
            assert_eq!(v.get("relayed"), Some(&Value::Bool(true)));
            *ids.entry(v["id"].as_i64().unwrap()).or_insert(0) += 1;
        }
        ids
    }

    async fn wait_for_ids(&self, expected: usize) -> BTreeMap<i64, usize> {
        let deadline = Instant::now() + WAIT;
        loop {
            let ids = self.output_ids().await;
            if ids.len() >= expected || Instant::now() > deadline {
                return ids;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn caught_up(&self) -> bool {
        self.driver.wait_until(WAIT, async |d| d.caught_up("relay.in").await).await.is_ok()
    }
}

fn values(ids: std::ops::Range<i64>) -> impl Iterator<Item = Value> {
    ids.map(|id| json!({"id": id, "payload": "x".repeat(40)}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_records_are_relayed_exactly_once_and_committed_to_the_end() {
    let d = Deployment::new();
    let relay = d.worker(&[]);
    relay.wait_ready().await;
    d.send(values(0..100_000)).await;
    let ids = d.wait_for_ids(100_000).await;
    assert_eq!(ids.len(), 100_000, "every input appears in relay.out");
    assert!(ids.values().all(|n| *n == 1), "each exactly once");
    assert!(d.caught_up().await, "committed offsets equal the end offsets");
    let (code, took, log) = relay.terminate().await;
    assert_eq!(code, 0, "{log}");
    assert!(took < Duration::from_secs(10), "stopped in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_stream_and_restarted_loses_nothing() {
    let d = Deployment::new();
    // A short session, so the group forgets the killed member soon.
    let settings = [("STROM_KAFKA_SESSION_TIMEOUT_MS", "6000"), ("STROM_KAFKA_HEARTBEAT_INTERVAL_MS", "500")];
    let relay = d.worker(&settings);
    relay.wait_ready().await;
    let sending = d.send(values(0..30_000));
    sending.await;
    // Kill it while it works through the input.
    let deadline = Instant::now() + WAIT;
    while relay.metric("strom_events_processed_total") < 1_000.0 {
        assert!(Instant::now() < deadline, "relay made no progress: {}", relay.log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    relay.kill();
    d.send(values(30_000..40_000)).await;
    // Restart after the killed member's session expired (a Tansu quirk: see DEVELOPERS.md).
    tokio::time::sleep(Duration::from_secs(7)).await;
    let relay = d.worker(&settings);
    relay.wait_ready().await;
    let ids = d.wait_for_ids(40_000).await;
    let missing: Vec<i64> = (0..40_000).filter(|i| !ids.contains_key(i)).take(10).collect();
    assert!(missing.is_empty(), "missing ids, e.g. {missing:?}");
    assert!(d.caught_up().await);
    let (code, _, log) = relay.terminate().await;
    assert_eq!(code, 0, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_the_partitions_and_one_takes_over_when_the_other_stops() {
    let d = Deployment::new();
    let a = d.worker(&[]);
    a.wait_ready().await;
    let b = d.worker(&[]);
    b.wait_ready().await;
    // Both members have partitions once the group settled: wait for b's first.
    let deadline = Instant::now() + WAIT;
    loop {
        d.send(values(0..2_000)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        if a.metric("strom_events_processed_total") > 0.0 && b.metric("strom_events_processed_total") > 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "the partitions were not shared:\n{}\n{}", a.log(), b.log());
    }

    d.send(values(10_000..20_000)).await;
    let (code, _, log) = a.terminate().await;
    assert_eq!(code, 0, "{log}");
    d.send(values(20_000..30_000)).await;
    let ids = d.wait_for_ids(20_000 + 2_000).await;
    let missing: Vec<i64> = (10_000..30_000).filter(|i| !ids.contains_key(i)).take(10).collect();
    assert!(missing.is_empty(), "missing ids, e.g. {missing:?}");
    assert!(d.caught_up().await, "the survivor committed everything");
    let rebalances = b.metric("strom_rebalances_total{kind=\"assigned\"}");
    assert!(rebalances >= 2.0, "b was assigned again when a left ({rebalances})");
    let (code, _, log) = b.terminate().await;
    assert_eq!(code, 0, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_go_to_the_dlq_with_reasons_and_are_counted() {
    let d = Deployment::new();
    let relay = d.worker(&[]);
    relay.wait_ready().await;
    let bad: [&[u8]; 4] = [b"not json", br#"{"id": "seven"}"#, br#"{"no_id": 1}"#, b"[1, 2, 3]"];
    for round in 0..25 {
        d.send(values(round * 40..round * 40 + 40)).await;
        d.send_raw(bad[round as usize % bad.len()]).await;
    }
    let ids = d.wait_for_ids(1_000).await;
    assert_eq!(ids.len(), 1_000, "every good message is relayed");
    let letters = d.driver.dead_letters("relay.in", 25, WAIT).await.unwrap();
    assert_eq!(letters.len(), 25);
    let input = d.driver.topic_name("relay.in");
    let originals = d.driver.messages("relay.in").await.unwrap();
    for l in &letters {
        assert!(["decode", "validation"].contains(&l.kind.as_str()), "{l:?}");
        assert!(!l.error.is_empty());
        assert_eq!(l.source_topic, input);
        assert_eq!(l.agent, "relay");
        let origin = originals.iter().find(|m| m.partition == l.source_partition && m.offset == l.source_offset);
        assert_eq!(origin.unwrap().value, l.value, "the headers name the exact origin");
    }
    let reasons: HashSet<&str> = letters.iter().map(|l| l.kind.as_str()).collect();
    assert_eq!(reasons.len(), 2, "both decode and validation failures: {reasons:?}");
    assert!(d.caught_up().await, "dead-lettered messages are done, not stuck");
    let counted = relay.metric("strom_dead_letters_total{");
    assert_eq!(counted, 25.0, "the metrics count the dead letters");
    assert_eq!(relay.metric("strom_events_processed_total{"), 1_000.0);
    let (status, health) = relay.get("/health");
    assert_eq!((status, health.trim()), (200, "ok"));
    let (code, _, log) = relay.terminate().await;
    assert_eq!(code, 0, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_within_ten_seconds_with_offsets_committed() {
    let d = Deployment::new();
    let relay = d.worker(&[("STROM_COMMIT_INTERVAL_MS", "3600000")]);
    relay.wait_ready().await;
    d.send(values(0..5_000)).await;
    let ids = d.wait_for_ids(5_000).await;
    assert_eq!(ids.len(), 5_000);
    // No interval commit happens in this test: only shutdown commits.
    let (code, took, log) = relay.terminate().await;
    assert_eq!(code, 0, "{log}");
    assert!(took < Duration::from_secs(10), "exit took {took:?}");
    assert!(log.contains("worker stopped"), "{log}");
    assert!(d.caught_up().await, "the offsets were committed on the way out");
}
