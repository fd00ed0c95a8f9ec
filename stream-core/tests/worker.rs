//! The worker around the agents, on every transport: backpressure by pausing
//! partitions, and the HTTP endpoint with its metrics.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use stream_core::prelude::*;
use stream_core::testing::TestDriver;

mod common;
use common::{Env, WAIT};

/// A blocking HTTP/1.0 GET on 127.0.0.1: (status, body).
fn get(port: u16, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, response.split("\r\n\r\n").nth(1).unwrap_or("").to_owned())
}

/// The sum of the samples of a metric whose line starts with `prefix`.
fn metric(body: &str, prefix: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

async fn a_stuck_agent_pauses_its_partitions_and_the_others_go_on(env: Env) {
    let app = env.app("backpressure");
    let slow_in = app.topic::<(), u32>("slow-in").partitions(2);
    let fast_in = app.topic::<(), u32>("fast-in").partitions(2);
    let (gate, opened) = tokio::sync::watch::channel(false);
    let (slow_done, fast_done) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (s, f) = (slow_done.clone(), fast_done.clone());
    app.agent("stuck", &slow_in, move |mut events| {
        let (done, mut opened) = (s.clone(), opened.clone());
        async move {
            while let Some(_event) = events.next().await {
                // Held until the test opens the gate.
                let _ = opened.wait_for(|open| *open).await;
                done.fetch_add(1, Ordering::SeqCst);
            }
            Ok(())
        }
    });
    app.agent("quick", &fast_in, move |mut events| {
        let done = f.clone();
        async move {
            while let Some(_event) = events.next().await {
                done.fetch_add(1, Ordering::SeqCst);
            }
            Ok(())
        }
    });
    let driver = TestDriver::start(&app).await.unwrap();
    // Many small arrivals: more batches than the stuck agent's inbox holds,
    // and enough parked beyond it that the worker pauses.
    for round in 0..100u32 {
        for i in 0..3 {
            driver.send(&slow_in, None, &(round * 3 + i)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    driver
        .wait_until(WAIT, async |d| Ok(d.worker().unwrap().paused_partitions() > 0))
        .await
        .expect("the stuck agent's partitions are paused");
    for i in 0..200 {
        driver.send(&fast_in, None, &i).await.unwrap();
    }
    driver.wait_until(WAIT, async |_| Ok(fast_done.load(Ordering::SeqCst) == 200)).await.unwrap();
    assert_eq!(slow_done.load(Ordering::SeqCst), 0, "the stuck agent is still stuck");
    driver.wait_until(WAIT, async |d| d.caught_up("fast-in").await).await.expect("the quick agent commits");

    gate.send_replace(true);
    driver.wait_until(WAIT, async |_| Ok(slow_done.load(Ordering::SeqCst) == 300)).await.unwrap();
    driver.wait_until(WAIT, async |d| Ok(d.worker().unwrap().paused_partitions() == 0)).await.expect("resumed");
    driver.wait_until(WAIT, async |d| d.caught_up("slow-in").await).await.unwrap();
    driver.stop().await.unwrap();
}

async fn the_http_endpoint_serves_health_readiness_and_metrics(env: Env) {
    let first = env.app("observed");
    let app = Env::same_as(&first).web_port(0).web_host([127, 0, 0, 1]).build().unwrap();
    let input = app.topic::<(), u32>("in").partitions(2);
    let output = app.topic::<(), u32>("out");
    let out = output.clone();
    app.agent("pick", &input, move |mut events| {
        let out = out.clone();
        async move {
            while let Some(e) = events.next().await {
                if *e.value() % 10 == 9 {
                    return Err("nine".into());
                }
                out.send(None, e.value()).await?;
            }
            Ok(())
        }
    })
    .on_error(ErrorPolicy::retry(1).backoff(Duration::from_millis(1), Duration::from_millis(1)));
    // A service's own route, on the same port.
    app.routes(axum::Router::new().route("/hello", axum::routing::get(|| async { "hello\n" })));
    let driver = TestDriver::start(&app).await.unwrap();
    let addr = driver.worker().unwrap().web_addr().unwrap();
    assert!(addr.ip().is_loopback(), "{addr}: STROM_WEB_HOST's address");
    let port = addr.port();
    assert_eq!(get(port, "/hello"), (200, "hello\n".into()));
    assert_eq!(get(port, "/health"), (200, "ok\n".into()));
    assert_eq!(get(port, "/ready"), (200, "ready\n".into()));
    for i in 0..100u32 {
        driver.send(&input, None, &i).await.unwrap();
    }
    driver.send_raw("in", None, b"not a number").await.unwrap();
    driver.read(&output, 90, WAIT).await.unwrap();
    driver.wait_until(WAIT, async |d| d.caught_up("in").await).await.unwrap();
    let name = app.config().topic_name("in");
    let labels = format!("{{agent=\"pick\",topic=\"{name}\"}}");
    let deadline = tokio::time::Instant::now() + WAIT;
    let body = loop {
        let (status, body) = get(port, "/metrics");
        assert_eq!(status, 200);
        // Lag comes with the consumer's statistics (every second on Kafka).
        if metric(&body, "strom_consumer_lag{") == 0.0 && body.contains("strom_consumer_lag{")
            || tokio::time::Instant::now() > deadline
        {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(metric(&body, &format!("strom_events_received_total{labels}")), 111.0, "{body}");
    assert_eq!(metric(&body, &format!("strom_events_processed_total{labels}")), 90.0, "{body}");
    assert_eq!(metric(&body, &format!("strom_events_failed_total{labels}")), 20.0, "{body}");
    assert_eq!(metric(&body, &format!("strom_events_retried_total{labels}")), 10.0, "{body}");
    assert_eq!(metric(&body, &format!("strom_dead_letters_total{labels}")), 11.0, "{body}");
    assert_eq!(metric(&body, &format!("strom_processing_latency_seconds_count{labels}")), 90.0, "{body}");
    assert!(body.contains("strom_processing_latency_seconds_bucket{le=\"0.00005\","), "{body}");
    assert!(metric(&body, "strom_messages_produced_total") >= 101.0, "{body}");
    assert!(metric(&body, "strom_commits_total") >= 1.0, "{body}");
    assert!(metric(&body, "strom_commit_latency_seconds_count") >= 1.0, "{body}");
    assert!(metric(&body, "strom_rebalances_total{kind=\"assigned\"}") >= 1.0, "{body}");
    assert_eq!(metric(&body, "strom_ready"), 1.0);
    assert!(body.contains(&format!("strom_consumer_lag{{topic=\"{name}\",partition=\"0\"}} 0")), "{body}");
    driver.stop().await.unwrap();
}

on_every_transport!(
    a_stuck_agent_pauses_its_partitions_and_the_others_go_on,
    the_http_endpoint_serves_health_readiness_and_metrics,
);
