//! The earthquake pipeline as processes, as an operator runs them: the
//! project's EMSC stand-in playing the shipped recording, quake-source,
//! quake-loader (SIGKILLed mid-stream and restarted) and two quake-map
//! replicas, on the Kafka-protocol broker of `STROM_TEST_KAFKA` and
//! PostgreSQL, with topics and a database of the test's own. Afterwards the
//! table holds each event once at its newest version, both replicas serve
//! the same FeatureCollection, the API's filters and 422s hold, and a
//! subscriber of one replica's event stream receives a new event within 2 s
//! of its arrival at the websocket.

#![allow(clippy::unwrap_used)]

#[path = "../../examples/tests/common/mod.rs"]
mod common;
mod pg;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Process, WAIT, kafka_url};
use serde_json::Value;
use stream_core::connect::postgres::tokio_postgres;
use stream_core::testing::TestDriver;
use strom_services::quake::emsc::{EmscStandIn, Frame, sample_recording};
use strom_services::quake::records::{Action, Quake, rfc3339};

/// Each unid at the version the pipeline must end with: the latest `lastupdate`.
fn newest(quakes: &[Quake]) -> BTreeMap<String, Quake> {
    let mut newest: BTreeMap<String, Quake> = BTreeMap::new();
    for q in quakes {
        match newest.get(&q.unid) {
            Some(held) if !q.supersedes(held) => {}
            _ => {
                newest.insert(q.unid.clone(), q.clone());
            }
        }
    }
    newest
}

/// `unid -> (lastupdate, mag)` of the `quakes` table.
async fn rows(db: &pg::TestDb) -> BTreeMap<String, (String, f64)> {
    let Ok((client, connection)) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls).await else {
        return BTreeMap::new();
    };
    tokio::spawn(connection);
    let sql =
        "SELECT unid, to_char(lastupdate AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), mag FROM quakes";
    match client.query(sql, &[]).await {
        Ok(rows) => rows.iter().map(|r| (r.get(0), (r.get(1), r.get(2)))).collect(),
        Err(_) => BTreeMap::new(),
    }
}

async fn wait_for<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn features(map: &Process, query: &str) -> Vec<Value> {
    let (status, body) = map.get(&format!("/api/quakes?{query}"));
    assert_eq!(status, 200, "{query}: {body}");
    let json: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["type"], "FeatureCollection");
    json["features"].as_array().unwrap().clone()
}

/// Opens `/api/quakes/stream` on `port`; every chunk it reads goes to the channel.
fn subscribe(port: u16) -> mpsc::Receiver<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(stream, "GET /api/quakes/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n").unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 || tx.send(String::from_utf8_lossy(&buf[..n]).into_owned()).is_err() {
                return;
            }
        }
    });
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emsc_to_postgres_and_two_map_replicas_with_the_loader_killed() {
    let kafka = kafka_url();
    let app = TestDriver::app_on(&kafka, "quakes");
    let db = pg::TestDb::new("quakes");
    let stand_in = EmscStandIn::start("127.0.0.1:0").await.unwrap();
    let url = stand_in.url();

    let recording = sample_recording();
    let valid = sample_quakes();
    let expected = newest(&valid);
    assert!(expected.len() >= 50 && valid.len() > expected.len(), "the recording has events and updates");

    let fast = [("STROM_KAFKA_FETCH_WAIT_MAX_MS", "10")];
    let with = |extra: &[(&'static str, String)]| -> Vec<(&'static str, String)> {
        fast.iter().map(|(k, v)| (*k, (*v).to_owned())).chain(extra.iter().cloned()).collect()
    };
    let start = |bin: &str, env: &[(&'static str, String)]| {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Process::start(bin, &app, &env)
    };
    let source = start(env!("CARGO_BIN_EXE_quake-source"), &with(&[("EMSC_URL", url.clone())]));
    let loader_env = with(&[("DATABASE_URL", db.url())]);
    let loader = start(env!("CARGO_BIN_EXE_quake-loader"), &loader_env);
    let maps = [start(env!("CARGO_BIN_EXE_quake-map"), &with(&[])), start(env!("CARGO_BIN_EXE_quake-map"), &with(&[]))];
    stand_in.wait_for_clients(1, WAIT).await.unwrap();
    for map in &maps {
        map.wait_ready().await;
    }

    // The first half, then quake-loader is SIGKILLed mid-stream and restarted.
    let half = recording.frames.len() / 2;
    stand_in.play_all(recording.frames[..half].iter().map(|r| r.frame.clone()));
    wait_for("rows of the first half", async || (rows(&db).await.len() >= 10).then_some(())).await;
    loader.kill();
    stand_in.play_all(recording.frames[half..].iter().map(|r| r.frame.clone()));
    let loader = start(env!("CARGO_BIN_EXE_quake-loader"), &loader_env);

    // The table: each event once, at its newest version (the stale update lost).
    let expected_rows: BTreeMap<String, (String, f64)> =
        expected.iter().map(|(unid, q)| (unid.clone(), (rfc3339(&q.lastupdate), q.mag))).collect();
    let table = wait_for("the table at the newest versions", async || {
        let rows = rows(&db).await;
        (rows == expected_rows).then_some(rows)
    })
    .await;
    assert_eq!(table.len(), expected.len());

    // Both replicas serve the same FeatureCollection: every event, newest first.
    let all = wait_for("both replicas hold every event", async || {
        let served: Vec<Vec<Value>> = maps.iter().map(|m| features(m, "limit=5000")).collect();
        (served[0].len() == expected.len() && served[0] == served[1]).then(|| served[0].clone())
    })
    .await;
    let ids: Vec<&str> = all.iter().map(|f| f["id"].as_str().unwrap()).collect();
    let mut by_time: Vec<&Quake> = expected.values().collect();
    by_time.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.unid.cmp(&a.unid)));
    assert_eq!(ids, by_time.iter().map(|q| q.unid.as_str()).collect::<Vec<_>>(), "newest event time first");
    for feature in &all {
        let q = &expected[feature["id"].as_str().unwrap()];
        assert_eq!(feature["properties"]["lastupdate"], rfc3339(&q.lastupdate), "{feature}");
        assert_eq!(feature["properties"]["mag"], q.mag);
    }

    // Filters, and 422 for bad parameters.
    let big = features(&maps[0], "min_mag=4.5&limit=5000");
    assert_eq!(big.len(), expected.values().filter(|q| q.mag >= 4.5).count());
    assert_eq!(features(&maps[1], "limit=3").len(), 3);
    let since = rfc3339(&by_time[4].time);
    let recent = features(&maps[1], &format!("since={since}&limit=5000"));
    assert_eq!(recent.len(), by_time.iter().filter(|q| q.time >= by_time[4].time).count());
    for bad in ["limit=0", "limit=5001", "min_mag=big", "since=yesterday"] {
        let (status, body) = maps[0].get(&format!("/api/quakes?{bad}"));
        assert_eq!(status, 422, "{bad}: {body}");
        assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_string(), "{body}");
    }
    // One dead letter per malformed message.
    let malformed = recording.frames.len() - valid.len();
    wait_for("the dead letters counted", async || {
        (source.metric("strom_websocket_dead_letters_total") == malformed as f64).then_some(())
    })
    .await;

    // A new event reaches a subscriber of the event stream within 2 s.
    let events = subscribe(maps[1].port());
    let mut fresh = expected.values().next().unwrap().clone();
    fresh.unid = "20991231_0000001".into();
    fresh.action = Action::Create;
    fresh.time = chrono::Utc::now();
    fresh.lastupdate = fresh.time;
    let sent = Instant::now();
    stand_in.play(fresh.to_emsc().to_string());
    let mut seen = String::new();
    while !seen.contains("20991231_0000001") {
        let left = Duration::from_secs(10).saturating_sub(sent.elapsed());
        seen += &events.recv_timeout(left).unwrap_or_else(|_| panic!("no event within 10 s: {seen}"));
    }
    let took = sent.elapsed();
    assert!(took < Duration::from_secs(2), "the event took {took:?} from the websocket to the stream");
    assert!(seen.contains("data: {"), "{seen}");

    let row = wait_for("the fresh row", async || rows(&db).await.get("20991231_0000001").cloned()).await;
    assert_eq!(row.0, rfc3339(&fresh.lastupdate));
    for process in [loader, source] {
        let (code, _, log) = process.terminate().await;
        assert_eq!(code, 0, "{log}");
    }
}

/// Forwards connections from a port of its own to PostgreSQL once `open`
/// is set; until then the port refuses them, as a database that is down does.
struct Gate {
    port: u16,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Gate {
    async fn closed() -> Gate {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let is_open = open.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                // Closed: the connection is dropped at once.
                if !is_open.load(std::sync::atomic::Ordering::Acquire) {
                    continue;
                }
                tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect("127.0.0.1:5432").await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Gate { port, open, task }
    }

    fn open(&self) {
        self.open.store(true, std::sync::atomic::Ordering::Release);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// quake-loader started while its database is down: it stays up (healthy),
/// waits, and loads everything once the database answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loader_waits_for_a_database_that_is_down() {
    let kafka = kafka_url();
    let app = TestDriver::app_on(&kafka, "quakes-down");
    let raw = strom_services::quake::raw(&app);
    let driver = TestDriver::start(&app).await.unwrap();
    let db = pg::TestDb::new("quakes_down");
    let gate = Gate::closed().await;
    let url = db.url().replace("127.0.0.1:5432", &format!("127.0.0.1:{}", gate.port));
    assert_ne!(url, db.url(), "the test database is on 127.0.0.1:5432");

    let quakes: Vec<Quake> = newest(&sample_quakes()).into_values().take(10).collect();
    for q in &quakes {
        raw.send_record(q).await.unwrap().await.unwrap();
    }
    let loader = Process::start(env!("CARGO_BIN_EXE_quake-loader"), &app, &[("DATABASE_URL", &url)]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(loader.get("/health").0, 200, "waiting is not failing: {}", loader.log());
    assert!(rows(&db).await.is_empty());

    gate.open();
    let loaded = wait_for("the rows once the database is up", async || {
        let rows = rows(&db).await;
        (rows.len() == quakes.len()).then_some(rows)
    })
    .await;
    for q in &quakes {
        assert_eq!(loaded[&q.unid], (rfc3339(&q.lastupdate), q.mag));
    }
    let (code, _, log) = loader.terminate().await;
    assert_eq!(code, 0, "{log}");
    driver.stop().await.unwrap();
}

/// The valid events of the shipped recording.
fn sample_quakes() -> Vec<Quake> {
    sample_recording()
        .frames
        .iter()
        .filter_map(|r| match &r.frame {
            Frame::Text(text) => Quake::from_emsc(text).ok(),
            Frame::Binary(_) => None,
        })
        .collect()
}
