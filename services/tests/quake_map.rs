//! quake-map's event stream under a client that stops reading: the replica
//! keeps at most a bounded number of events for it (its stream's buffer, and
//! the sockets'), and ends its stream once it fell further behind (counted),
//! while a client that reads gets every event; in process, on the memory
//! transport.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use chrono::Utc;
use stream_core::testing::TestDriver;
use strom_services::quake::map;
use strom_services::quake::page::PageSettings;
use strom_services::quake::records::{Action, Quake};

const WAIT: Duration = Duration::from_secs(60);
/// Events sent: about 50 MB of stream, more than the socket buffers of a
/// client that does not read can take.
const EVENTS: usize = 3000;
const STEP: usize = 100;

fn quake(i: usize) -> Quake {
    let now = Utc::now();
    Quake {
        action: Action::Create,
        unid: format!("20261201_{i:07}"),
        time: now,
        lastupdate: now,
        lat: 38.0,
        lon: 21.0,
        depth: Some(10.0),
        mag: 3.0,
        magtype: Some("ml".into()),
        // A long region name: fewer events fill the socket buffers.
        flynn_region: Some("X".repeat(16_000)),
        auth: None,
        evtype: None,
        source_id: None,
        source_catalog: None,
    }
}

/// Opens the event stream; the stream's headers and first comment are read.
fn subscribe(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(stream, "GET /api/quakes/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(": connected") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "the stream closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    stream
}

fn metric(addr: SocketAddr, name: &str) -> f64 {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    body.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected_and_the_others_keep_up() {
    let broker = format!("memory://quake-map-slow-{}", std::process::id());
    let app = TestDriver::builder_on(&broker, "quake-map").web_port(0).build().unwrap();
    let raw = strom_services::quake::raw(&app);
    map::serve(&app, &raw, PageSettings::default());
    let driver = TestDriver::start(&app).await.unwrap();
    let port = driver.worker().and_then(|w| w.web_addr()).unwrap().port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));

    // The slow client reads nothing from now on; the other reads on a thread.
    let slow = subscribe(addr);
    let mut fast = subscribe(addr);
    let (progress_tx, progress) = std::sync::mpsc::channel::<usize>();
    let reader = std::thread::spawn(move || {
        let (mut seen, mut buf) = (0usize, vec![0u8; 64 * 1024]);
        let mut line = Vec::new();
        while seen < EVENTS {
            let n = fast.read(&mut buf).unwrap();
            assert!(n > 0, "the reading client was disconnected after {seen} events");
            for &b in &buf[..n] {
                if b == b'\n' {
                    if line.starts_with(b"data: ") {
                        seen += 1;
                        let _ = progress_tx.send(seen);
                    }
                    line.clear();
                } else {
                    line.push(b);
                }
            }
        }
        seen
    });
    assert_eq!(metric(addr, "strom_quake_sse_clients"), 2.0);

    // In steps the reading client keeps up with (the stream's buffer is 256 events).
    let mut read = 0;
    for step in 0..EVENTS / STEP {
        for i in step * STEP..(step + 1) * STEP {
            raw.send_record(&quake(i)).await.unwrap();
        }
        while read < (step + 1) * STEP {
            read = tokio::task::block_in_place(|| progress.recv_timeout(WAIT)).unwrap();
        }
    }
    let seen = tokio::task::spawn_blocking(move || reader.join().unwrap()).await.unwrap();
    assert_eq!(seen, EVENTS, "the reading client got every event");

    // The slow client: what waits for it is bounded (the stream's buffer and
    // the sockets'). When it reads again it gets that much, and then the
    // end of the stream: it was let go, and counted.
    let mut slow = slow;
    let (mut got, mut bytes, mut buf) = (0usize, Vec::new(), vec![0u8; 64 * 1024]);
    loop {
        match slow.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
        }
    }
    for line in bytes.split(|b| *b == b'\n') {
        if line.starts_with(b"data: ") {
            got += 1;
        }
    }
    assert!(got < EVENTS, "the slow client was sent every event ({got}): nothing was dropped");
    assert_eq!(metric(addr, "strom_quake_sse_dropped_total"), 1.0);
    let deadline = Instant::now() + WAIT;
    while metric(addr, "strom_quake_sse_clients") > 1.0 {
        assert!(Instant::now() < deadline, "the slow client is still counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(metric(addr, "strom_quake_map_events"), EVENTS as f64);
    driver.stop().await.unwrap();
}
