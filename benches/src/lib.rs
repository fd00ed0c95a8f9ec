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

/// What the earthquake pipeline's harnesses (`quake_map`, `quake_latency`) share.
pub mod quake {
    use std::io::{BufRead, BufReader};
    use std::process::{Child, Command, Stdio};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use chrono::Utc;
    use strom_services::quake::records::{Action, Quake};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A harness's error.
    pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

    /// A synthetic new event, `unid` `<run>_<i>`, origin time and `lastupdate` now.
    pub fn synthetic(run: &str, i: u64) -> Quake {
        let now = Utc::now();
        Quake {
            action: Action::Create,
            unid: format!("{run}_{i:07}"),
            time: now,
            lastupdate: now,
            lat: -60.0 + (i * 7 % 120) as f64,
            lon: -170.0 + (i * 13 % 340) as f64,
            depth: Some(10.0 + (i % 50) as f64),
            mag: 1.0 + (i % 60) as f64 / 10.0,
            magtype: Some("ml".into()),
            flynn_region: Some("SYNTHETIC REGION".into()),
            auth: Some("EMSC".into()),
            evtype: Some("ke".into()),
            source_id: Some(i.to_string()),
            source_catalog: Some("EMSC-RTS".into()),
        }
    }

    /// A release binary of strom-services run as a process (next to the
    /// harness's own executable), with an HTTP port of its own; killed when dropped.
    #[derive(Debug)]
    pub struct Service {
        child: Child,
        log: Arc<Mutex<String>>,
        port: u16,
    }

    impl Service {
        /// Starts `name` with `env` (plus `STROM_WEB_PORT=0` and `RUST_LOG`
        /// info, to read its port from its log) and waits until it serves HTTP.
        pub fn start(name: &str, env: &[(&str, String)]) -> Res<Service> {
            let path = std::env::current_exe()?.parent().ok_or("no exe dir")?.join(name);
            if !path.exists() {
                return Err(format!("{} missing: cargo build --release -p strom-services", path.display()).into());
            }
            let mut cmd = Command::new(path);
            cmd.env("STROM_WEB_PORT", "0").env("RUST_LOG", "info").stdout(Stdio::null()).stderr(Stdio::piped());
            for (k, v) in env {
                cmd.env(k, v);
            }
            let mut child = cmd.spawn()?;
            let log = Arc::new(Mutex::new(String::new()));
            let stderr = child.stderr.take().ok_or("no stderr")?;
            let sink = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut log = sink.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    // The port's line comes first; keep the log bounded.
                    if log.len() < 64 * 1024 {
                        log.push_str(&line);
                        log.push('\n');
                    }
                }
            });
            let mut service = Service { child, log, port: 0 };
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let port = {
                    let log = service.log.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    log.split("metrics at http://")
                        .nth(1)
                        .and_then(|rest| rest.split("/metrics").next())
                        .and_then(|addr| addr.rsplit(':').next())
                        .and_then(|p| p.parse().ok())
                };
                if let Some(port) = port {
                    service.port = port;
                    return Ok(service);
                }
                if let Some(status) = service.child.try_wait()? {
                    return Err(format!("{name} exited with {status}: {}", service.log()).into());
                }
                if Instant::now() > deadline {
                    return Err(format!("{name} did not serve HTTP within a minute: {}", service.log()).into());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }

        /// Its HTTP port.
        pub fn port(&self) -> u16 {
            self.port
        }

        /// Its process id.
        pub fn pid(&self) -> u32 {
            self.child.id()
        }

        /// The start of its log.
        pub fn log(&self) -> String {
            self.log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
        }
    }

    impl Drop for Service {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// `GET path` on 127.0.0.1:`port` (HTTP/1.0): the status and the body.
    pub async fn get(port: u16, path: &str) -> Res<(u16, String)> {
        let request = async {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).await?;
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await?;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&response).into_owned())
        };
        let response = tokio::time::timeout(Duration::from_secs(30), request).await??;
        let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
        Ok((status, body))
    }

    /// The sum of the metric lines of `port`'s `/metrics` starting with `prefix`.
    pub async fn metric(port: u16, prefix: &str) -> f64 {
        let Ok((_, body)) = get(port, "/metrics").await else { return f64::NAN };
        body.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum()
    }

    /// Waits (up to `timeout`) until `port`'s `/ready` answers 200.
    pub async fn wait_ready(port: u16, timeout: Duration) -> Res<()> {
        let deadline = Instant::now() + timeout;
        while get(port, "/ready").await.map(|(s, _)| s).unwrap_or(0) != 200 {
            if Instant::now() > deadline {
                return Err(format!("port {port} not ready within {timeout:?}").into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// A process's resident set (`VmRSS` of /proc/<pid>/status), KiB.
    pub fn rss_kib(pid: u32) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// The `p` quantile (0..=1, nearest rank below) of sorted values.
    pub fn quantile(sorted: &[f64], p: f64) -> f64 {
        sorted.get(((sorted.len() as f64 - 1.0) * p) as usize).copied().unwrap_or(f64::NAN)
    }

    /// The Kafka-protocol broker: `STROM_BENCH_KAFKA`, default 127.0.0.1:9092.
    pub fn kafka_broker() -> String {
        std::env::var("STROM_BENCH_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
    }

    /// `STROM_KAFKA_FETCH_WAIT_MAX_MS` for the services, default 2 (Tansu
    /// holds every fetch that long, even with data waiting).
    pub fn fetch_wait() -> String {
        std::env::var("STROM_KAFKA_FETCH_WAIT_MAX_MS").unwrap_or_else(|_| "2".into())
    }

    /// `uptime`'s load averages, for the report.
    pub fn load() -> String {
        std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    }
}
