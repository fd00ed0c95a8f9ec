//! Every example, run in-process on the memory transport through the test
//! driver, and as a binary with its command line.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;
use stream_core::testing::TestDriver;
use strom_examples::windowed_average::Reading;
use strom_examples::{dlq, hello, relay, windowed_average, wordcount};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn hello_greets() {
    let app = TestDriver::app("hello");
    let topics = hello::build(&app, None);
    let driver = TestDriver::start(&app).await.unwrap();
    driver.send(&topics.names, None, &"Ada".to_string()).await.unwrap();
    let greetings = driver.read(&topics.greetings, 1, WAIT).await.unwrap();
    assert_eq!(greetings[0].value(), "Hello, Ada!");
    driver.stop().await.unwrap();
}

#[tokio::test]
async fn relay_adds_relayed_keeps_keys_and_dead_letters_the_rest() {
    let app = TestDriver::app("relay");
    let topics = relay::build(&app);
    let driver = TestDriver::start(&app).await.unwrap();
    for i in 0..100 {
        let value = json!({"id": i, "payload": "x".repeat(i % 5)}).to_string();
        driver.send_raw("relay.in", Some(format!("key-{i}").as_bytes()), value.as_bytes()).await.unwrap();
    }
    for bad in [&b"[1, 2]"[..], br#"{"id": "seven"}"#, br#"{"name": "no id"}"#, b"\xff\xfe", br#"{"id": 1.5}"#] {
        driver.send_raw("relay.in", Some(b"bad"), bad).await.unwrap();
    }
    driver.send_raw("relay.in", None, br#"{"id": -1}"#).await.unwrap();
    let out = driver.read(&topics.output, 101, WAIT).await.unwrap();
    let mut ids: Vec<i64> = out.iter().map(|e| e.value().0["id"].as_i64().unwrap()).collect();
    ids.sort_unstable();
    assert_eq!(ids, std::iter::once(-1).chain(0..100).collect::<Vec<_>>());
    for e in &out {
        let id = e.value().0["id"].as_i64().unwrap();
        assert_eq!(e.value().0["relayed"], json!(true));
        let key = (id >= 0).then(|| Bytes::from(format!("key-{id}")));
        assert_eq!(e.key().cloned(), key, "the key is kept");
    }
    let letters = driver.dead_letters("relay.in", 5, WAIT).await.unwrap();
    assert_eq!(letters.len(), 5);
    assert!(letters.iter().all(|l| l.source_topic == "relay.in" && !l.error.is_empty()));
    assert!(letters.iter().any(|l| l.error.contains("id: must be an integer, not \"seven\"")));
    assert!(letters.iter().any(|l| l.error.contains("id: is missing")));
    driver.wait_until(WAIT, async |d| d.caught_up("relay.in").await).await.unwrap();
    driver.stop().await.unwrap();
}

#[tokio::test]
async fn wordcount_counts_every_word_in_its_table_and_emits_each_update() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestDriver::builder_on("memory://wordcount-example", "wordcount").state_dir(dir.path()).build().unwrap();
    let topics = wordcount::build(&app);
    let driver = TestDriver::start(&app).await.unwrap();
    let lines = ["The quick brown fox", "jumps over  the lazy dog", "THE END", "", "fox\tand\ndog"];
    let mut truth: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for line in lines {
        for word in line.to_lowercase().split_whitespace() {
            *truth.entry(word.to_owned()).or_default() += 1;
        }
        driver.send_raw("words.in", Some(b"any"), line.as_bytes()).await.unwrap();
    }
    driver.send_raw("words.in", None, b"caf\xe9 not utf-8").await.unwrap();
    let total = truth.values().sum::<u64>() as usize;
    let updates = driver.read(&topics.output, total, WAIT).await.unwrap();
    // Each update is keyed by its word; the last one of a word is its count.
    let mut last = std::collections::BTreeMap::new();
    for u in &updates {
        assert_eq!(u.key(), Some(&u.value().word));
        last.insert(u.value().word.clone(), u.value().count);
    }
    assert_eq!(last, truth);
    let table: std::collections::BTreeMap<String, u64> = topics.counts.local_entries().unwrap().into_iter().collect();
    assert_eq!(table, truth);
    let letters = driver.dead_letters("words.in", 1, WAIT).await.unwrap();
    assert!(letters[0].error.contains("utf"), "{}", letters[0].error);
    driver.stop().await.unwrap();
}

#[tokio::test]
async fn windowed_average_emits_each_window_once_when_it_closes() {
    let dir = tempfile::tempdir().unwrap();
    let app =
        TestDriver::builder_on("memory://windowed-average", "windowed-average").state_dir(dir.path()).build().unwrap();
    let topics = windowed_average::build(&app);
    let driver = TestDriver::start(&app).await.unwrap();
    let base: i64 = 1_700_000_000_000; // a multiple of the 10 s window
    let reading = |sensor: &str, value: f64, at: i64| Reading { sensor: sensor.into(), value, time: base + at };
    // Window [0, 10 s): s1 20, 22 and (1 s late, within grace) 24; s2 10.
    // The 25 s reading closes it; the one at 3 s after that is too late.
    for r in [
        reading("s1", 20.0, 1_000),
        reading("s2", 10.0, 2_000),
        reading("s1", 22.0, 9_000),
        reading("s1", 30.0, 10_500),
        reading("s1", 24.0, 9_500),
        reading("s1", 40.0, 25_000),
        reading("s1", 99.0, 3_000),
    ] {
        driver.send(&topics.input, Some(&r.sensor.clone()), &r).await.unwrap();
    }
    driver.send_raw("readings.in", Some(b"s9"), br#"{"sensor": "s9", "value": 1e9, "time": 0}"#).await.unwrap();
    // The first window closes by the watermark; the others when the partition goes idle.
    let closed = driver.read(&topics.output, 4, WAIT + windowed_average::IDLE).await.unwrap();
    let mut got: Vec<(String, i64, f64, u64)> = closed
        .iter()
        .map(|e| (e.value().sensor.clone(), e.value().start - base, e.value().average, e.value().count))
        .collect();
    got.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    assert_eq!(
        got,
        vec![
            ("s1".into(), 0, 22.0, 3),
            ("s1".into(), 10_000, 30.0, 1),
            ("s1".into(), 20_000, 40.0, 1),
            ("s2".into(), 0, 10.0, 1),
        ]
    );
    assert_eq!(topics.sums.table().stats().late_events.load(std::sync::atomic::Ordering::Relaxed), 1);
    let letters = driver.dead_letters("readings.in", 1, WAIT).await.unwrap();
    assert!(letters[0].error.contains("value"), "{}", letters[0].error);
    driver.stop().await.unwrap();
}

#[tokio::test]
async fn dlq_rejects_bad_payments_and_accepts_good_ones() {
    let app = TestDriver::app("dlq");
    let topics = dlq::build(&app);
    let driver = TestDriver::start(&app).await.unwrap();
    for payment in dlq::SAMPLE {
        driver.send_raw("payments", None, payment.as_bytes()).await.unwrap();
    }
    let accepted = driver.read(&topics.accepted, 2, WAIT).await.unwrap();
    let mut accounts: Vec<&str> = accepted.iter().map(|e| e.value().account.as_str()).collect();
    accounts.sort_unstable();
    assert_eq!(accounts, ["alice", "dave"]);
    assert_eq!(accepted[0].key(), Some(&accepted[0].value().account), "keyed by the record's key field");
    let letters = driver.dead_letters("payments", 3, WAIT).await.unwrap();
    let kinds: Vec<&str> = letters.iter().map(|l| l.kind.as_str()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "decode").count(), 2);
    assert_eq!(kinds.iter().filter(|k| **k == "validation").count(), 1);
    let stats = driver.worker().unwrap().agent_stats("report-dead-letters").unwrap();
    driver
        .wait_until(WAIT, async |_| Ok(stats.processed.load(std::sync::atomic::Ordering::Relaxed) == 3))
        .await
        .unwrap();
    driver.stop().await.unwrap();
}

/// Runs an example binary with `args` on `memory://`, returning its output.
fn run(bin: &str, args: &[&str], env: &[(&str, &str)], stop_after: Option<Duration>) -> (i32, String, String) {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env("STROM_BROKER", "memory://")
        .env("STROM_WEB_PORT", "0")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("example binary starts");
    let pid = child.id() as i32;
    if let Some(after) = stop_after {
        std::thread::sleep(after);
        terminate(pid);
    }
    let started = Instant::now();
    let out = child.wait_with_output().expect("example binary runs");
    assert!(started.elapsed() < Duration::from_secs(15), "exits promptly");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Sends SIGTERM, as an orchestrator stopping a container would.
fn terminate(pid: i32) {
    let status = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().expect("kill runs");
    assert!(status.success());
}

#[test]
fn hello_binary_greets_and_exits_cleanly_on_sigterm() {
    let (code, stdout, stderr) =
        run(env!("CARGO_BIN_EXE_hello"), &[], &[("HELLO_EVERY_MS", "100")], Some(Duration::from_millis(1500)));
    assert_eq!(code, 0, "stderr: {stderr}");
    assert!(stdout.contains("Hello, Ada!"), "stdout: {stdout}");
    assert!(stdout.contains("Hello, Grace!"), "stdout: {stdout}");
    assert!(stderr.contains("shutdown requested"), "stderr: {stderr}");
    assert!(stderr.contains("worker stopped"), "stderr: {stderr}");
}

#[test]
fn dlq_binary_reports_rejected_payments() {
    let (code, stdout, stderr) = run(env!("CARGO_BIN_EXE_dlq"), &[], &[], None);
    assert_eq!(code, 0, "stderr: {stderr}");
    assert_eq!(stdout.matches("rejected payment at offset").count(), 3, "stdout: {stdout}");
    assert!(stdout.contains("(validation): invalid message at payments"), "stdout: {stdout}");
}

#[test]
fn cli_lists_agents_and_topics_and_has_help() {
    let (code, stdout, _) = run(env!("CARGO_BIN_EXE_relay"), &["agents"], &[], None);
    assert_eq!(code, 0);
    assert!(stdout.contains("relay") && stdout.contains("relay.in"), "{stdout}");
    let (code, stdout, _) = run(env!("CARGO_BIN_EXE_relay"), &["topics"], &[], None);
    assert_eq!(code, 0);
    for topic in ["relay.in ", "relay.in.dlq", "relay.out"] {
        assert!(stdout.contains(topic), "{topic} in {stdout}");
    }
    assert!(stdout.lines().any(|l| l.starts_with("relay.in ") && l.contains(" 4 ")), "{stdout}");
    for args in
        [&["--help"][..], &["send", "--help"], &["worker", "--help"], &["agents", "--help"], &["topics", "--help"]]
    {
        let (code, stdout, _) = run(env!("CARGO_BIN_EXE_relay"), args, &[], None);
        assert_eq!(code, 0, "{args:?}");
        assert!(stdout.contains("Usage:"), "{args:?}: {stdout}");
    }
    let (code, _, stderr) = run(env!("CARGO_BIN_EXE_relay"), &["send", "relay.in"], &[], None);
    assert_eq!(code, 2, "send needs --value or --file");
    assert!(stderr.contains("--value"), "{stderr}");
}
