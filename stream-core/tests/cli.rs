//! The command line: `send`, `agents`, `topics` (run in-process on memory://).

#![allow(clippy::unwrap_used)]

use stream_core::prelude::*;
use stream_core::run_command;
use stream_core::testing::TestDriver;

fn app() -> (App, Topic<u32, serde_json::Value>) {
    let app = TestDriver::app("cli");
    let readings = app.topic::<u32, serde_json::Value>("readings").partitions(3);
    app.agent("noop", &readings, |_events| async { Ok(()) }).concurrency(2);
    (app, readings)
}

async fn run(app: &App, args: &[&str]) -> (Result<(), stream_core::Error>, String) {
    let mut out = Vec::new();
    let result = run_command(app, args, &mut out).await;
    (result, String::from_utf8(out).unwrap())
}

#[tokio::test]
async fn send_a_value_with_a_key() {
    let (app, _) = app();
    let (result, out) = run(&app, &["send", "readings", "--key", "7", "--value", r#"{"c": 21.5}"#]).await;
    result.unwrap();
    assert_eq!(out.trim(), "sent 1 message(s) to readings");
    let broker = app.memory_broker().unwrap();
    let p = stream_core::transport::partition_for_key(b"7", 3);
    let msgs = broker.read("readings", p, 0, 10);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].key.as_deref(), Some(&b"7"[..]));
    assert_eq!(msgs[0].value.as_deref(), Some(&br#"{"c": 21.5}"#[..]));
}

#[tokio::test]
async fn send_a_file_of_json_lines_checked_before_sending() {
    let (app, _) = app();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.jsonl");
    std::fs::write(&good, "{\"a\": 1}\n\n{\"a\": 2}\n{\"a\": 3}\n").unwrap();
    let (result, out) = run(&app, &["send", "readings", "--file", good.to_str().unwrap()]).await;
    result.unwrap();
    assert_eq!(out.trim(), "sent 3 message(s) to readings");

    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"a\": 1}\nnot json\n").unwrap();
    let (result, _) = run(&app, &["send", "readings", "--file", bad.to_str().unwrap()]).await;
    let err = result.unwrap_err().to_string();
    assert!(err.starts_with("value #2 is not a valid serde_json::value::Value"), "{err}");
    let total: usize = (0..3).map(|p| app.memory_broker().unwrap().read("readings", p, 0, 100).len()).sum();
    assert_eq!(total, 3, "nothing of the bad file was sent");
}

#[tokio::test]
async fn send_to_an_unknown_topic_names_the_declared_ones() {
    let (app, _) = app();
    let (result, _) = run(&app, &["send", "nope", "--value", "1"]).await;
    let err = result.unwrap_err().to_string();
    assert_eq!(err, "unknown topic \"nope\"; declared topics: readings");
}

#[tokio::test]
async fn agents_and_topics_are_listed() {
    let (app, _) = app();
    let (result, out) = run(&app, &["agents"]).await;
    result.unwrap();
    let line = out.lines().find(|l| l.starts_with("noop")).unwrap();
    assert!(line.contains("readings") && line.trim_end().ends_with('2'), "{out}");
    let (result, out) = run(&app, &["topics"]).await;
    result.unwrap();
    let line = out.lines().find(|l| l.starts_with("readings ")).unwrap();
    assert!(line.contains(" 3 ") && line.contains("json") && line.contains("serde_json::value::Value"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("readings.dlq")), "{out}");
}
