//! The MQTT source against real Mosquitto brokers: the shared one on
//! 127.0.0.1:1883, and private ones (started here on a free port) where a test
//! must own the broker (exact topic filters, stopping it). Every test uses
//! client ids and topics of its own and forgets its persistent sessions at the
//! end, so the tests run in parallel.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use stream_core::connect::mqtt::rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use stream_core::connect::mqtt::{MqttMessage, MqttSource};
use stream_core::testing::TestDriver;
use stream_core::{App, Error, Topic};

/// How long a test waits for something before failing.
const WAIT: Duration = Duration::from_secs(30);
/// The shared Mosquitto.
const SHARED: u16 = 1883;

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("strom-test-{name}-{}-{nanos:x}", std::process::id())
}

/// The output topic: MQTT topic → payload as JSON.
type Raw = Topic<String, Value>;

/// A source on 127.0.0.1:`port` that writes every JSON message to `raw`.
fn forward(app: &App, source: MqttSource, raw: &Raw) {
    let raw = raw.clone();
    source.task(app, "mqtt", move |msg: MqttMessage| {
        let raw = raw.clone();
        async move {
            let value: Value = serde_json::from_slice(&msg.payload)?;
            Ok(vec![raw.send(&msg.topic, &value).await?])
        }
    });
}

fn source(app: &App, port: u16, client_id: &str) -> MqttSource {
    MqttSource::new(app, &format!("mqtt://127.0.0.1:{port}"), client_id).unwrap()
}

/// A metric of one source, as exported.
fn metric(app: &App, name: &str, source: &str) -> f64 {
    let prefix = format!("strom_{name}{{source=\"{source}\"}} ");
    app.metrics().encode().lines().find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok()).unwrap_or(0.0)
}

/// Waits until the source is connected with its subscriptions in place.
async fn subscribed(driver: &TestDriver, source: &str) {
    driver
        .wait_until(WAIT, async |d| Ok(metric(d.app_ref(), "mqtt_connected", source) == 1.0))
        .await
        .unwrap_or_else(|_| panic!("source {source} did not subscribe within {WAIT:?}"));
}

/// Publishes with QoS 1 and waits for the broker's acknowledgements.
async fn publish(port: u16, messages: &[(String, Vec<u8>)]) {
    let mut options = MqttOptions::new(unique("pub"), "127.0.0.1", port);
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(options, messages.len() + 10);
    for (topic, payload) in messages {
        client.publish(topic.clone(), QoS::AtLeastOnce, false, payload.clone()).await.unwrap();
    }
    let mut acked = 0;
    tokio::time::timeout(WAIT, async {
        while acked < messages.len() {
            if let Event::Incoming(Packet::PubAck(_)) = events.poll().await.unwrap() {
                acked += 1;
            }
        }
        client.disconnect().await.unwrap();
        while !matches!(events.poll().await, Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_)) {}
    })
    .await
    .expect("the broker acknowledged every publish in time");
}

/// Connects as `client_id` with a clean session: the broker forgets its
/// persistent session (subscriptions, queued messages).
async fn forget_session(port: u16, client_id: &str) {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_clean_session(true);
    let (client, mut events) = AsyncClient::new(options, 10);
    client.disconnect().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while !matches!(events.poll().await, Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_)) {}
    })
    .await;
}

fn reading(topic: &str, n: u32) -> (String, Vec<u8>) {
    (topic.to_owned(), json!({"sensor": n, "temperature": 20.0 + f64::from(n)}).to_string().into_bytes())
}

/// The `sensor` numbers of what reached `raw`.
fn sensors(events: &[stream_core::Event<String, Value>]) -> BTreeSet<u64> {
    events.iter().filter_map(|e| e.value()["sensor"].as_u64()).collect()
}

/// A Mosquitto of the test's own on a free port, without persistence.
struct PrivateBroker {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateBroker {
    fn start() -> PrivateBroker {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let conf = format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest none\n");
        std::fs::write(dir.path().join("mosquitto.conf"), conf).unwrap();
        let mut broker = PrivateBroker { port, dir, child: None };
        broker.restart();
        broker
    }

    fn restart(&mut self) {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the mosquitto binary must be installed");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "private mosquitto did not listen on {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn both_design_forms_reach_the_topic() {
    // A private broker, so that the exact filters of the collection service see only this test's messages.
    let broker = PrivateBroker::start();
    let app = TestDriver::app("mqtt-forms");
    let raw: Raw = app.topic("sensors.raw");
    let client = unique("forms");
    forward(&app, source(&app, broker.port, &client).subscribe("sensors/+/temperature").subscribe("/+/temp"), &raw);
    let driver = TestDriver::start(&app).await.unwrap();
    subscribed(&driver, &client).await;

    let seed = br#"{"timestamp": "1700000000.123", "value": "21"}"#.to_vec();
    let rich = br#"{"sensor": 7, "temperature": 21.5, "unit": "C", "timestamp": "2026-11-23T12:00:00.123Z"}"#.to_vec();
    publish(broker.port, &[("/sensor1/temp".into(), seed), ("sensors/7/temperature".into(), rich)]).await;

    let got = driver.read(&raw, 2, WAIT).await.unwrap();
    let mut by_topic: Vec<(String, Value)> =
        got.iter().map(|e| (e.key().unwrap().clone(), e.value().clone())).collect();
    by_topic.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(by_topic[0], ("/sensor1/temp".into(), json!({"timestamp": "1700000000.123", "value": "21"})));
    assert_eq!(by_topic[1].0, "sensors/7/temperature");
    assert_eq!(by_topic[1].1["temperature"], json!(21.5));
    assert_eq!(metric(&app, "mqtt_messages_received_total", &client), 2.0);
    driver.wait_until(WAIT, async |d| Ok(metric(d.app_ref(), "mqtt_in_flight", &client) == 0.0)).await.unwrap();
    driver.stop().await.unwrap();
}

#[tokio::test]
async fn messages_published_while_the_source_is_down_arrive_when_it_returns() {
    let client = unique("session");
    let topic = format!("{client}/3/temperature");
    let filter = format!("{client}/+/temperature");

    let app = TestDriver::app("mqtt-session");
    let raw: Raw = app.topic("sensors.raw");
    forward(&app, source(&app, SHARED, &client).subscribe(&filter), &raw);
    let driver = TestDriver::start(&app).await.unwrap();
    subscribed(&driver, &client).await;
    driver.stop().await.unwrap(); // disconnects, keeping the session

    publish(SHARED, &(0..5).map(|n| reading(&topic, n)).collect::<Vec<_>>()).await;

    let app = TestDriver::app("mqtt-session");
    let raw: Raw = app.topic("sensors.raw");
    forward(&app, source(&app, SHARED, &client).subscribe(&filter), &raw);
    let driver = TestDriver::start(&app).await.unwrap();
    let got = driver.read(&raw, 5, WAIT).await.unwrap();
    assert_eq!(sensors(&got), (0..5).collect());
    driver.stop().await.unwrap();
    forget_session(SHARED, &client).await;
}

#[tokio::test]
async fn a_message_whose_write_was_not_acknowledged_is_delivered_again_after_a_crash() {
    let client = unique("crash");
    let topic = format!("{client}/1/temperature");

    // The first run writes each message but never learns that the write is done.
    let app = TestDriver::app("mqtt-crash");
    let raw: Raw = app.topic("sensors.raw");
    let out = raw.clone();
    source(&app, SHARED, &client).subscribe(&topic).task(&app, "mqtt", move |msg: MqttMessage| {
        let raw = out.clone();
        async move {
            let value: Value = serde_json::from_slice(&msg.payload)?;
            raw.send(&msg.topic, &value).await?;
            std::future::pending::<()>().await; // the acknowledgement never comes
            Ok(vec![])
        }
    });
    let mut driver = TestDriver::start(&app).await.unwrap();
    subscribed(&driver, &client).await;
    publish(SHARED, &(0..3).map(|n| reading(&topic, n)).collect::<Vec<_>>()).await;
    assert_eq!(sensors(&driver.read(&raw, 1, WAIT).await.unwrap()), [0].into());
    driver.crash();

    // The next run, same client id: nothing is lost (the first message is written twice).
    let app = TestDriver::app("mqtt-crash");
    let raw: Raw = app.topic("sensors.raw");
    forward(&app, source(&app, SHARED, &client).subscribe(&topic), &raw);
    let driver = TestDriver::start(&app).await.unwrap();
    let got = driver.read(&raw, 3, WAIT).await.unwrap();
    assert_eq!(sensors(&got), (0..3).collect());
    driver.stop().await.unwrap();
    forget_session(SHARED, &client).await;
}

#[tokio::test]
async fn a_refused_write_is_not_acknowledged_nor_dead_lettered_and_is_delivered_again() {
    let client = unique("refused");
    let topic = format!("{client}/1/temperature");
    let app = TestDriver::app("mqtt-refused");
    let raw: Raw = app.topic("sensors.raw");
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let (out, tries) = (raw.clone(), attempts.clone());
    source(&app, SHARED, &client).subscribe(&topic).task(&app, "mqtt", move |msg: MqttMessage| {
        let (raw, tries) = (out.clone(), tries.clone());
        async move {
            let value: Value = serde_json::from_slice(&msg.payload)?;
            let sensor = value["sensor"].as_u64().unwrap();
            let first = {
                let mut tries = tries.lock().unwrap();
                tries.push(sensor);
                tries.iter().filter(|s| **s == sensor).count() == 1
            };
            if first {
                // As a broker refusing the write would: the run ends, the message stays unacknowledged.
                return Err(Error::Send { topic: raw.name().into(), reason: "simulated refusal".into() }.into());
            }
            Ok(vec![raw.send(&msg.topic, &value).await?])
        }
    });
    let driver = TestDriver::start(&app).await.unwrap();
    subscribed(&driver, &client).await;
    publish(SHARED, &(0..2).map(|n| reading(&topic, n)).collect::<Vec<_>>()).await;

    let got = driver.read(&raw, 2, WAIT).await.unwrap();
    assert_eq!(sensors(&got), (0..2).collect());
    assert!(driver.messages("mqtt.dlq").await.unwrap().is_empty(), "a refused write is not the input's fault");
    assert_eq!(metric(&app, "mqtt_dead_letters_total", &client), 0.0);
    assert!(attempts.lock().unwrap().len() >= 4, "each message was handled again: {:?}", attempts.lock().unwrap());
    driver.stop().await.unwrap();
    forget_session(SHARED, &client).await;
}

#[tokio::test]
async fn two_sources_in_a_share_group_split_the_messages_and_lose_none() {
    let tag = unique("shared");
    let (a, b) = (format!("{tag}-a"), format!("{tag}-b"));
    let filter = format!("{tag}/+/temperature");
    let app = TestDriver::app("mqtt-shared");
    let raw: Raw = app.topic("sensors.raw");
    forward(&app, source(&app, SHARED, &a).subscribe(&filter).shared(&tag), &raw);
    // A second task of the same app: as a second replica would, with its own client id.
    let out = raw.clone();
    source(&app, SHARED, &b).subscribe(&filter).shared(&tag).task(&app, "mqtt-b", move |msg: MqttMessage| {
        let raw = out.clone();
        async move {
            let value: Value = serde_json::from_slice(&msg.payload)?;
            Ok(vec![raw.send(&msg.topic, &value).await?])
        }
    });
    let driver = TestDriver::start(&app).await.unwrap();
    subscribed(&driver, &a).await;
    subscribed(&driver, &b).await;

    publish(SHARED, &(0..40).map(|n| reading(&format!("{tag}/{n}/temperature"), n)).collect::<Vec<_>>()).await;
    let got = driver.read(&raw, 40, WAIT).await.unwrap();
    assert_eq!(sensors(&got), (0..40).collect());
    let (got_a, got_b) =
        (metric(&app, "mqtt_messages_received_total", &a), metric(&app, "mqtt_messages_received_total", &b));
    assert_eq!(got_a + got_b, 40.0);
    assert!(got_a > 0.0 && got_b > 0.0, "both members got messages: {got_a} and {got_b}");
    driver.stop().await.unwrap();
    forget_session(SHARED, &a).await;
    forget_session(SHARED, &b).await;
}

#[tokio::test]
async fn the_source_reconnects_when_the_broker_comes_back() {
    let mut broker = PrivateBroker::start();
    let client = unique("reconnect");
    let app = TestDriver::app("mqtt-reconnect");
    let raw: Raw = app.topic("sensors.raw");
    forward(&app, source(&app, broker.port, &client).subscribe("sensors/+/temperature"), &raw);
    let driver = TestDriver::start(&app).await.unwrap();
    subscribed(&driver, &client).await;
    publish(broker.port, &(0..3).map(|n| reading(&format!("sensors/{n}/temperature"), n)).collect::<Vec<_>>()).await;
    assert_eq!(sensors(&driver.read(&raw, 3, WAIT).await.unwrap()), (0..3).collect());

    broker.stop();
    driver
        .wait_until(WAIT, async |d| Ok(metric(d.app_ref(), "mqtt_connected", &client) == 0.0))
        .await
        .expect("the source noticed the broker is gone");
    tokio::time::sleep(Duration::from_millis(500)).await; // a few failed attempts
    broker.restart();

    // The restarted broker kept no session: the source subscribes again.
    subscribed(&driver, &client).await;
    publish(broker.port, &(3..6).map(|n| reading(&format!("sensors/{n}/temperature"), n)).collect::<Vec<_>>()).await;
    assert_eq!(sensors(&driver.read(&raw, 3, WAIT).await.unwrap()), (3..6).collect());
    assert!(metric(&app, "mqtt_reconnects_total", &client) >= 1.0);
    driver.stop().await.unwrap();
}

#[tokio::test]
async fn bad_input_is_dead_lettered_with_its_reason_and_good_input_flows_around_it() {
    let client = unique("bad");
    let topic = format!("{client}/1/temperature");
    let app = TestDriver::app("mqtt-bad");
    let raw: Raw = app.topic("sensors.raw");
    let rejected = app.topic::<String, Bytes>("sensors.raw.dlq");
    forward(&app, source(&app, SHARED, &client).subscribe(&topic).max_payload(1024).dead_letters(&rejected), &raw);
    let driver = TestDriver::start(&app).await.unwrap();
    subscribed(&driver, &client).await;

    publish(
        SHARED,
        &[
            reading(&topic, 1),
            (topic.clone(), b"not json at all".to_vec()),
            (topic.clone(), vec![b'x'; 4096]),
            reading(&topic, 2),
        ],
    )
    .await;
    let got = driver.read(&raw, 2, WAIT).await.unwrap();
    assert_eq!(got.iter().map(|e| e.value()["sensor"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2], "in order");

    let letters = driver.dead_letters("sensors.raw", 2, WAIT).await.unwrap();
    assert_eq!(letters.len(), 2);
    let (not_json, huge) = (&letters[0], &letters[1]);
    assert_eq!((not_json.kind.as_str(), not_json.source_topic.as_str()), ("decode", topic.as_str()));
    assert_eq!(not_json.value.as_deref(), Some(&b"not json at all"[..]));
    assert!(not_json.error.contains("expected"), "{}", not_json.error);
    assert_eq!(not_json.agent, client);
    assert_eq!(huge.kind, "validation");
    assert!(huge.error.contains("4096 bytes is over the limit of 1024"), "{}", huge.error);
    assert_eq!(huge.value.as_ref().map(Bytes::len), Some(1024));
    assert_eq!(metric(&app, "mqtt_dead_letters_total", &client), 2.0);
    assert_eq!(metric(&app, "mqtt_messages_received_total", &client), 4.0);
    driver.wait_until(WAIT, async |d| Ok(metric(d.app_ref(), "mqtt_in_flight", &client) == 0.0)).await.unwrap();
    driver.stop().await.unwrap();
    forget_session(SHARED, &client).await;
}
