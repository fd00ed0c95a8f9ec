//! quake-source in process, on a private `memory://` broker, reading the
//! project's EMSC stand-in: the shipped recording's events on `quakes.raw`
//! keyed by their unid, its malformed messages on `quakes.raw.dlq` once each,
//! a dropped connection made again without losing what came after.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use stream_core::App;
use stream_core::connect::websocket::WebSocketSource;
use stream_core::dlq::dlq_topic;
use stream_core::testing::TestDriver;
use strom_services::quake;
use strom_services::quake::emsc::{EmscStandIn, Frame, Recorded, Recording, Replay};
use strom_services::quake::records::{Action, Quake, RAW};
use strom_services::quake::source::{self, MAX_FRAME, SOURCE_NAME};

const WAIT: Duration = Duration::from_secs(30);
const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/quakes/recording.jsonl");

/// quake-source's task on `app`, reading the stand-in, reconnecting quickly.
fn start_source(app: &App, stand_in: &EmscStandIn) {
    let ws = WebSocketSource::new(app, &stand_in.url(), SOURCE_NAME)
        .unwrap()
        .backoff(Duration::from_millis(20), Duration::from_millis(200));
    source::source(app, ws);
}

/// The quakes among `frames`, and the rest.
fn split(frames: &[Recorded]) -> (Vec<Quake>, Vec<&Recorded>) {
    let mut quakes = Vec::new();
    let mut malformed = Vec::new();
    for recorded in frames {
        match &recorded.frame {
            Frame::Text(text) => match Quake::from_emsc(text) {
                Ok(quake) => quakes.push(quake),
                Err(_) => malformed.push(recorded),
            },
            Frame::Binary(_) => malformed.push(recorded),
        }
    }
    (quakes, malformed)
}

/// A value of the metric line starting with `prefix` (name and labels).
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn sentinel() -> String {
    let json = r#"{"action": "create", "data": {"type": "Feature", "properties": {"unid": "20261201_9999999",
        "time": "2026-12-01T23:59:00Z", "lastupdate": "2026-12-01T23:59:30Z", "lat": 38.0, "lon": 21.0,
        "depth": 10, "mag": 2.0, "magtype": "ml", "flynn_region": "GREECE", "auth": "NOA", "evtype": "ke",
        "source_catalog": "EMSC-RTS"}}}"#;
    json.to_owned()
}

#[tokio::test]
async fn the_recording_arrives_in_order_per_event_and_every_malformed_message_once_despite_a_dropped_connection() {
    let app = TestDriver::app("quake-source");
    let stand_in = EmscStandIn::start("127.0.0.1:0").await.unwrap();
    start_source(&app, &stand_in);
    let driver = TestDriver::start(&app).await.unwrap();
    stand_in.wait_for_clients(1, WAIT).await.unwrap();
    let raw = quake::raw(&app);

    let recording = Recording::load(SHIPPED).unwrap();
    let (first, second) = recording.frames.split_at(recording.frames.len() / 2);
    let (first_quakes, first_malformed) = split(first);
    let (second_quakes, second_malformed) = split(second);
    assert!(!first_malformed.is_empty() && !second_malformed.is_empty());

    // The first half, as fast as possible; all of it through before the connection drops.
    let played = stand_in.replay(Recording { frames: first.to_vec() }, Replay::at_speed(0.0)).await.unwrap();
    assert_eq!(played, first.len() as u64);
    let mut events = driver.read(&raw, first_quakes.len(), WAIT).await.unwrap();
    driver.dead_letters(RAW, first_malformed.len(), WAIT).await.unwrap();

    // Mid-stream, the connection drops; the second half goes over the connection the source makes again.
    assert_eq!(stand_in.drop_connections(), 1);
    stand_in.wait_for_clients(1, WAIT).await.unwrap();
    assert_eq!(stand_in.connections_accepted(), 2);
    let played = stand_in.replay(Recording { frames: second.to_vec() }, Replay::at_speed(0.0)).await.unwrap();
    assert_eq!(played, second.len() as u64);
    events.extend(driver.read(&raw, second_quakes.len(), WAIT).await.unwrap());
    let malformed: Vec<&Recorded> = first_malformed.into_iter().chain(second_malformed).collect();
    let letters = driver.dead_letters(RAW, malformed.len(), WAIT).await.unwrap();

    // A last event, after everything else: once it is through, nothing more is coming.
    stand_in.play(sentinel());
    let last = driver.read(&raw, 1, WAIT).await.unwrap();
    assert_eq!(last[0].key().map(String::as_str), Some("20261201_9999999"));
    assert_eq!(driver.messages(RAW).await.unwrap().len(), first_quakes.len() + second_quakes.len() + 1);

    // Every event, keyed by its unid, in the order EMSC sent them (the stale update included).
    let mut expected: HashMap<String, Vec<Quake>> = HashMap::new();
    for quake in first_quakes.iter().chain(&second_quakes) {
        expected.entry(quake.unid.clone()).or_default().push(quake.clone());
    }
    let mut got: HashMap<String, Vec<Quake>> = HashMap::new();
    for event in &events {
        let key = event.key().unwrap().clone();
        assert_eq!(key, event.value().unid);
        got.entry(key).or_default().push(event.value().clone());
    }
    assert_eq!(got.len(), expected.len());
    for (unid, versions) in &expected {
        assert_eq!(got.get(unid), Some(versions), "the versions of {unid}");
    }
    assert!(expected.values().any(|v| v.len() == 3), "the main shock, revised twice");

    // Exactly one dead letter per malformed message, as received, with the reason.
    assert_eq!(driver.messages(&dlq_topic(RAW)).await.unwrap().len(), malformed.len());
    assert_eq!(letters.len(), malformed.len());
    let mut sent: Vec<&[u8]> = malformed.iter().map(|r| r.frame.bytes()).collect();
    let mut lettered: Vec<&[u8]> = letters.iter().map(|l| l.value.as_deref().unwrap()).collect();
    sent.sort();
    lettered.sort();
    assert_eq!(lettered, sent);
    for letter in &letters {
        let bytes = letter.value.as_deref().unwrap();
        let reason = match std::str::from_utf8(bytes) {
            Ok(text) => Quake::from_emsc(text).unwrap_err().to_string(),
            Err(_) => "UTF-8".to_owned(),
        };
        assert!(letter.error.contains(&reason), "{:?} does not say {reason:?}", letter.error);
        assert_eq!(letter.agent, SOURCE_NAME);
        assert_eq!(letter.source_topic, stand_in.url());
    }

    // Metrics.
    let text = app.metrics().encode();
    let count =
        |action: Action| first_quakes.iter().chain(&second_quakes).filter(|q| q.action == action).count() as f64;
    assert_eq!(metric(&text, r#"strom_quake_events_total{action="create"}"#), Some(count(Action::Create) + 1.0));
    assert_eq!(metric(&text, r#"strom_quake_events_total{action="update"}"#), Some(count(Action::Update)));
    assert_eq!(
        metric(&text, r#"strom_websocket_dead_letters_total{source="emsc"}"#),
        Some(malformed.len() as f64),
        "{text}"
    );
    assert_eq!(metric(&text, r#"strom_websocket_connects_total{source="emsc"}"#), Some(2.0), "{text}");

    driver.stop().await.unwrap();
}

#[tokio::test]
async fn a_frame_over_the_limit_is_dead_lettered_by_the_source_and_the_next_one_still_arrives() {
    let app = TestDriver::app("quake-source-oversize");
    let stand_in = EmscStandIn::start("127.0.0.1:0").await.unwrap();
    start_source(&app, &stand_in);
    let driver = TestDriver::start(&app).await.unwrap();
    stand_in.wait_for_clients(1, WAIT).await.unwrap();

    // A frame that would be a quake, were it not padded past the limit.
    let mut big = sentinel().replace("20261201_9999999", "20261201_0000001");
    big.push_str(&" ".repeat(MAX_FRAME + 1 - big.len()));
    assert_eq!(big.len(), MAX_FRAME + 1);
    assert!(Quake::from_emsc(&big).is_ok());
    stand_in.play_all([big, sentinel()]);

    let letters = driver.dead_letters(RAW, 1, WAIT).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].value.as_ref().map(|v| v.len()), Some(MAX_FRAME), "the dead letter keeps max_frame bytes");
    assert_eq!(letters[0].kind, "validation");
    let events = driver.read(&quake::raw(&app), 1, WAIT).await.unwrap();
    assert_eq!(events[0].key().map(String::as_str), Some("20261201_9999999"));
    assert_eq!(driver.messages(RAW).await.unwrap().len(), 1);
    // The connection survived it.
    assert_eq!(stand_in.connections_accepted(), 1);
    driver.stop().await.unwrap();
}

#[tokio::test]
async fn a_looping_rebased_replay_shows_recent_events_again_and_again_as_the_demo_plays_it() {
    let app = TestDriver::app("quake-source-replay");
    let stand_in = EmscStandIn::start("127.0.0.1:0").await.unwrap();
    start_source(&app, &stand_in);
    let driver = TestDriver::start(&app).await.unwrap();
    stand_in.wait_for_clients(1, WAIT).await.unwrap();

    // The first events of the recording, 100 times faster than recorded, over and over.
    let recording = Recording::load(SHIPPED).unwrap();
    let is_create = |r: &Recorded| matches!(&r.frame, Frame::Text(t) if Quake::from_emsc(t).is_ok_and(|q| q.action == Action::Create));
    let frames: Vec<Recorded> = recording.frames.into_iter().filter(is_create).take(8).collect();
    let (quakes, _) = split(&frames);
    assert_eq!(quakes.len(), 8);
    let started = chrono::Utc::now();
    let replay = stand_in.replay(Recording { frames }, Replay::at_speed(100.0).looping(true).rebased(true));
    // Every event at least twice (the passes' versions of an event are in order: one key, one partition).
    let versions = async |d: &TestDriver| -> stream_core::Result<HashMap<String, Vec<Quake>>> {
        let mut versions: HashMap<String, Vec<Quake>> = HashMap::new();
        for message in d.messages(RAW).await? {
            let quake: Quake = serde_json::from_slice(message.value.as_deref().unwrap_or_default()).unwrap();
            versions.entry(quake.unid.clone()).or_default().push(quake);
        }
        Ok(versions)
    };
    let twice = async |d: &TestDriver| {
        let versions = versions(d).await?;
        Ok(quakes.iter().all(|q| versions.get(&q.unid).is_some_and(|v| v.len() >= 2)))
    };
    driver.wait_until(WAIT, twice).await.unwrap();
    replay.abort();

    let versions = versions(&driver).await.unwrap();
    for recorded in &quakes {
        let (first, second) = (&versions[&recorded.unid][0], &versions[&recorded.unid][1]);
        // Recent: revised no later than now, and within the recording's span (a day) of it.
        assert!(first.lastupdate <= chrono::Utc::now() && first.lastupdate > started - chrono::Duration::days(1));
        assert_eq!(first.lastupdate - first.time, recorded.lastupdate - recorded.time);
        assert_eq!((first.mag, first.lat, first.lon), (recorded.mag, recorded.lat, recorded.lon));
        // The next pass is newer, so it supersedes the first.
        assert!(second.supersedes(first), "{} was not revised later in the second pass", second.unid);
    }
    driver.stop().await.unwrap();
}
