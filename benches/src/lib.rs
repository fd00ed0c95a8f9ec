//! Shared pieces of Strom's benchmarks.

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use stream_core::AppBuilder;
use stream_core::prelude::*;
use stream_core::transport::OutMessage;

/// A small sensor reading, about 80 bytes of JSON.
#[derive(Record, Serialize, Deserialize, Debug, Clone)]
pub struct Reading {
    /// The sensor.
    #[record(key)]
    pub sensor: u32,
    /// Event time, epoch ms.
    #[record(timestamp)]
    pub ts_ms: i64,
    /// The value in Fahrenheit.
    #[record(range(min = -200.0, max = 400.0))]
    pub fahrenheit: f64,
}

/// The same reading in Celsius.
#[derive(Record, Serialize, Deserialize, Debug, Clone)]
pub struct Celsius {
    /// The sensor.
    #[record(key)]
    pub sensor: u32,
    /// Event time, epoch ms.
    #[record(timestamp)]
    pub ts_ms: i64,
    /// The value in Celsius.
    pub celsius: f64,
}

/// What the agent under test does.
#[derive(Debug, Clone, Copy)]
pub enum Workload {
    /// Decode JSON records, convert, encode, send (a typical map agent).
    JsonMap,
    /// Pass raw bytes through (the framework's own cost).
    RawPassthrough,
}

/// Runs `n` events through a one-agent app on a fresh memory broker and
/// returns the time from worker start until the last output was produced.
pub async fn run_map(n: usize, partitions: i32, workload: Workload) -> Duration {
    let app = App::builder("bench").broker(format!("memory://bench-{}", unique())).build().expect("app");
    let broker = app.memory_broker().expect("memory broker");
    broker.retain_records(n + 1);
    match workload {
        Workload::JsonMap => {
            let input = app.topic::<u32, Reading>("in").partitions(partitions);
            let output = app.topic::<u32, Celsius>("out").partitions(partitions);
            app.agent("convert", &input, move |readings| {
                let output = output.clone();
                async move {
                    let mut converted = readings.map(|r: Reading| Celsius {
                        sensor: r.sensor,
                        ts_ms: r.ts_ms,
                        celsius: (r.fahrenheit - 32.0) / 1.8,
                    });
                    while let Some(c) = converted.next().await {
                        output.send_record(c.value()).await?;
                    }
                    Ok(())
                }
            });
        }
        Workload::RawPassthrough => {
            let input = app.topic::<Bytes, Bytes>("in").partitions(partitions);
            let output = app.topic::<Bytes, Bytes>("out").partitions(partitions);
            app.agent("pass", &input, move |events| {
                let output = output.clone();
                async move { events.sink(&output).await }
            });
        }
    }
    for spec in app.topics() {
        broker.create_topic(&spec).expect("topic");
    }
    preload(&broker, n);
    let started = Instant::now();
    let worker = app.start().await.expect("worker");
    loop {
        let produced: i64 = (0..partitions).filter_map(|p| broker.end_offset("out", p)).sum();
        if produced as usize >= n {
            break;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let elapsed = started.elapsed();
    worker.stop().await.expect("clean stop");
    elapsed
}

/// Appends `n` readings to the input topic (before the clock starts). Not
/// inlined, so profilers can leave it out (`callgrind --toggle-collect=*preload*`).
#[inline(never)]
fn preload(broker: &stream_core::transport::memory::MemoryBroker, n: usize) {
    for i in 0..n {
        let reading = Reading { sensor: (i % 1000) as u32, ts_ms: 1_700_000_000_000 + i as i64, fahrenheit: 70.5 };
        let value = serde_json::to_vec(&reading).expect("json");
        broker
            .append(OutMessage {
                topic: "in".into(),
                partition: None,
                key: Some(Bytes::from(reading.sensor.to_string())),
                value: Some(Bytes::from(value)),
                headers: Vec::new(),
                timestamp_ms: Some(0),
            })
            .expect("append");
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// An app that fills a table fast, for the recovery benchmarks: every event
/// on `fill` (4 partitions) with value `block` sets the 10,000 keys
/// `key-<block>-<i>` of the table `keys`.
pub type Filler = (App, Topic<u32, u32>, Table<String, u64>);

/// Keys an event of a [`Filler`] sets.
pub const FILL_BLOCK: u32 = 10_000;

/// Declares a [`Filler`] on the app `builder` builds.
pub fn filler(builder: AppBuilder) -> Result<Filler, stream_core::Error> {
    let app = builder.build()?;
    let fill = app.topic::<u32, u32>("fill").partitions(4);
    let table = app.table::<String, u64>("keys", &fill);
    let t = table.clone();
    app.agent("fill", &fill, move |mut events| {
        let table = t.clone();
        async move {
            while let Some(e) = events.next().await {
                let part = table.at(&e)?;
                let block = *e.value();
                for i in 0..u64::from(FILL_BLOCK) {
                    part.insert(&format!("key-{block}-{i}"), &i).await?;
                }
            }
            Ok(())
        }
    });
    Ok((app, fill, table))
}
