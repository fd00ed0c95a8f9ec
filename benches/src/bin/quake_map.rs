//! quake-map under load: the GeoJSON API under many concurrent clients, and
//! the event stream (server-sent events) with 1,000 clients on one replica.
//!
//! ```text
//! scripts/test-env.sh up
//! cargo build --release -p strom-benches -p strom-services
//! # /api/quakes with 5,000 events, wrk -c200 -t2 -d20s --latency (limit=5000, then the default 500):
//! target/release/quake_map api [events] [seconds]
//! # 1,000 SSE clients, 200 events at 5/s: RSS, and frame played to the last client's receipt:
//! target/release/quake_map sse [clients] [events] [events/s]
//! ```
//!
//! The project's EMSC stand-in plays synthetic new events (unique `unid`s,
//! origin time and `lastupdate` now) to quake-source, which sends them to
//! `quakes.raw`, which quake-map follows as a global table. By default
//! quake-source and quake-map are the release binaries, as processes, on the
//! Kafka-protocol broker (`STROM_BENCH_KAFKA`, default 127.0.0.1:9092), with
//! topics of their own (`STROM_TOPIC_PREFIX`) and `fetch.wait.max.ms` 2
//! (`STROM_KAFKA_FETCH_WAIT_MAX_MS` overrides it: Tansu holds every fetch that
//! long even with data waiting). `QUAKE_BROKER=memory` runs the same source
//! and map apps in this process on `memory://` instead: Strom's own share,
//! without the broker (the RSS is then this process's, clients included).
//!
//! `api` runs `wrk` (Debian's package) against the replica: it shares the
//! machine's cores with the server. `sse` opens each client as a raw TCP
//! connection read by a tokio task (GET /api/quakes/stream, HTTP/1.1), so it
//! needs an fd limit above 2 x clients when the map runs in this process
//! (`ulimit -n 4096`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stream_core::connect::websocket::WebSocketSource;
use stream_core::{App, TableStore, Worker};
use strom_benches::quake::{Res, Service, fetch_wait, get, kafka_broker, load, metric, quantile, rss_kib, synthetic};
use strom_services::quake::emsc::EmscStandIn;
use strom_services::quake::page::PageSettings;
use strom_services::quake::source::SOURCE_NAME;
use strom_services::quake::{self, map, source};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// quake-source and quake-map: processes on the broker, or apps in this process.
enum Pipeline {
    Processes { _source: Service, map: Service },
    InProcess { worker: Worker, port: u16 },
}

impl Pipeline {
    async fn start(stand_in: &EmscStandIn, run: &str) -> Res<Pipeline> {
        if std::env::var("QUAKE_BROKER").is_ok_and(|b| b == "memory") {
            let app = App::builder("quake-bench")
                .broker(format!("memory://{run}"))
                .web_port(0)
                .table_store(TableStore::Memory)
                .build()?;
            source::source(&app, WebSocketSource::new(&app, &stand_in.url(), SOURCE_NAME)?);
            map::serve(&app, &quake::raw(&app), PageSettings::default());
            let worker = app.start().await?;
            let port = worker.web_addr().ok_or("no HTTP address")?.port();
            return Ok(Pipeline::InProcess { worker, port });
        }
        let env = |extra: Option<(&'static str, String)>| -> Vec<(&'static str, String)> {
            let mut env = vec![
                ("STROM_BROKER", format!("kafka://{}", kafka_broker())),
                ("STROM_TOPIC_PREFIX", format!("{run}-")),
                ("STROM_KAFKA_FETCH_WAIT_MAX_MS", fetch_wait()),
            ];
            env.extend(extra);
            env
        };
        let source = Service::start("quake-source", &env(Some(("EMSC_URL", stand_in.url()))))?;
        let map = Service::start("quake-map", &env(None))?;
        Ok(Pipeline::Processes { _source: source, map })
    }

    fn port(&self) -> u16 {
        match self {
            Pipeline::Processes { map, .. } => map.port(),
            Pipeline::InProcess { port, .. } => *port,
        }
    }

    fn map_pid(&self) -> u32 {
        match self {
            Pipeline::Processes { map, .. } => map.pid(),
            Pipeline::InProcess { .. } => std::process::id(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Pipeline::Processes { .. } => format!(
                "quake-source and quake-map processes on kafka://{} (fetch.wait.max.ms={})",
                kafka_broker(),
                fetch_wait()
            ),
            Pipeline::InProcess { .. } => "quake-source and quake-map apps in this process on memory://".into(),
        }
    }

    async fn stop(self) {
        if let Pipeline::InProcess { worker, .. } = self {
            let _ = tokio::time::timeout(Duration::from_secs(30), worker.stop()).await;
        }
    }
}

/// Starts the stand-in and the pipeline, and waits until an event makes it
/// to the map (topics created, the table following).
async fn setup(run: &str) -> Res<(EmscStandIn, Pipeline)> {
    let stand_in = EmscStandIn::start("127.0.0.1:0").await?;
    let pipeline = Pipeline::start(&stand_in, run).await?;
    strom_benches::quake::wait_ready(pipeline.port(), Duration::from_secs(120)).await?;
    stand_in.wait_for_clients(1, Duration::from_secs(60)).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut i = 0;
    while metric(pipeline.port(), "strom_quake_map_events").await < 1.0 {
        if i % 10 == 0 {
            stand_in.play(synthetic(&format!("{run}-warm"), i).to_emsc().to_string());
        }
        i += 1;
        if Instant::now() > deadline {
            return Err("no event reached the map within two minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((stand_in, pipeline))
}

fn main() -> Res<()> {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_else(|| "sse".into());
    let numbers: Vec<u64> = args.map(|a| a.parse()).collect::<Result<_, _>>()?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let run = format!("quake-map-{}-{}", std::process::id(), chrono::Utc::now().timestamp_millis());
    match command.as_str() {
        "api" => {
            rt.block_on(api(&run, numbers.first().copied().unwrap_or(5000), numbers.get(1).copied().unwrap_or(20)))
        }
        "sse" => rt.block_on(sse(
            &run,
            numbers.first().copied().unwrap_or(1000) as usize,
            numbers.get(1).copied().unwrap_or(200),
            numbers.get(2).copied().unwrap_or(5),
        )),
        other => {
            Err(format!("unknown command {other:?}: api [events] [seconds] | sse [clients] [events] [events/s]").into())
        }
    }
}

/// `/api/quakes` with `events` events held, under `wrk -c200 -t2`.
async fn api(run: &str, events: u64, seconds: u64) -> Res<()> {
    let (stand_in, pipeline) = setup(run).await?;
    let port = pipeline.port();
    let loading = Instant::now();
    let held_before = metric(port, "strom_quake_map_events").await;
    stand_in.play_all((0..events).map(|i| synthetic(run, i).to_emsc().to_string()));
    let target = held_before + events as f64;
    let deadline = Instant::now() + Duration::from_secs(300);
    while metric(port, "strom_quake_map_events").await < target {
        if Instant::now() > deadline {
            return Err(format!("the map did not hold {target} events within 5 minutes").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "{}: {events} events played and held by the map in {:.1} s; map RSS {} KiB",
        pipeline.describe(),
        loading.elapsed().as_secs_f64(),
        rss_kib(pipeline.map_pid()).unwrap_or(0)
    );
    for query in ["limit=5000", ""] {
        let path = if query.is_empty() { "/api/quakes".to_owned() } else { format!("/api/quakes?{query}") };
        let (status, body) = get(port, &path).await?;
        let features = serde_json::from_str::<serde_json::Value>(&body)?["features"].as_array().map_or(0, Vec::len);
        println!("GET {path}: {status}, {features} features, {} bytes; load before wrk: {}", body.len(), load());
        let url = format!("http://127.0.0.1:{port}{path}");
        // wrk stops itself after `seconds` (-d).
        let args = ["-c200".to_owned(), "-t2".to_owned(), format!("-d{seconds}s"), "--latency".to_owned(), url];
        let output =
            tokio::task::spawn_blocking(move || std::process::Command::new("wrk").args(args).output()).await??;
        println!("{}", String::from_utf8_lossy(&output.stdout));
        println!("load after wrk: {}; map RSS {} KiB", load(), rss_kib(pipeline.map_pid()).unwrap_or(0));
    }
    pipeline.stop().await;
    Ok(())
}

/// When each event reached how many clients, first and last.
#[derive(Default)]
struct Arrivals {
    by_unid: Mutex<HashMap<String, (usize, Instant, Instant)>>,
}

impl Arrivals {
    fn record(&self, unid: &str, at: Instant) {
        let mut by_unid = self.by_unid.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = by_unid.entry(unid.to_owned()).or_insert((0, at, at));
        entry.0 += 1;
        entry.1 = entry.1.min(at);
        entry.2 = entry.2.max(at);
    }
}

/// One SSE client: every `data:` line's feature `id` recorded on arrival.
async fn client(port: u16, connected: Arc<AtomicUsize>, arrivals: Arc<Arrivals>) -> Res<()> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(b"GET /api/quakes/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
        .await?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let mut in_headers = true;
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            return Err("the stream ended".into());
        }
        let at = Instant::now();
        if in_headers {
            if line == "\r\n" {
                in_headers = false;
                connected.fetch_add(1, Ordering::SeqCst);
            } else if line.starts_with("HTTP/") && !line.contains(" 200 ") {
                return Err(format!("the stream answered {line}").into());
            }
            continue;
        }
        // The feature's `"id":"<unid>"` (`"unid":` and `"source_id":` do not match).
        if let Some(rest) = line.strip_prefix("data: ").and_then(|d| d.split("\"id\":\"").nth(1))
            && let Some(unid) = rest.split('"').next()
        {
            arrivals.record(unid, at);
        }
    }
}

/// `clients` SSE clients on one replica; `events` new events played at `rate` a second.
async fn sse(run: &str, clients: usize, events: u64, rate: u64) -> Res<()> {
    let load_before = load();
    let (stand_in, pipeline) = setup(run).await?;
    let port = pipeline.port();
    let pid = pipeline.map_pid();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = rss_kib(pid).unwrap_or(0);

    let connected = Arc::new(AtomicUsize::new(0));
    let arrivals = Arc::new(Arrivals::default());
    let failed = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let (connected, arrivals, failed) = (connected.clone(), arrivals.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = client(port, connected, arrivals).await
                && failed.fetch_add(1, Ordering::SeqCst) == 0
            {
                eprintln!("a client failed: {e}");
            }
        }));
        // Not all at once: the listener's backlog.
        if tasks.len() % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while connected.load(Ordering::SeqCst) + failed.load(Ordering::SeqCst) < clients
        || metric(port, "strom_quake_sse_clients").await < connected.load(Ordering::SeqCst) as f64
    {
        if Instant::now() > deadline {
            return Err(
                format!("{} of {clients} clients connected within a minute", connected.load(Ordering::SeqCst)).into()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connected_n = connected.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_connected = rss_kib(pid).unwrap_or(0);

    // The events, at `rate` a second; each one's play time.
    let mut played: Vec<(String, Instant)> = Vec::with_capacity(events as usize);
    let started = Instant::now();
    for i in 0..events {
        let due = started + Duration::from_micros(i * 1_000_000 / rate.max(1));
        tokio::time::sleep_until(due.into()).await;
        let frame = synthetic(run, i).to_emsc().to_string();
        played.push((format!("{run}_{i:07}"), Instant::now()));
        stand_in.play(frame);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let complete = {
            let by_unid = arrivals.by_unid.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            played.iter().all(|(unid, _)| by_unid.get(unid).is_some_and(|a| a.0 >= connected_n))
        };
        if complete || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss_after = rss_kib(pid).unwrap_or(0);
    let (mut first, mut last, mut incomplete) = (Vec::new(), Vec::new(), 0);
    {
        let by_unid = arrivals.by_unid.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (unid, at) in &played {
            match by_unid.get(unid) {
                Some(&(n, f, l)) => {
                    first.push(f.duration_since(*at).as_secs_f64() * 1000.0);
                    last.push(l.duration_since(*at).as_secs_f64() * 1000.0);
                    if n < connected_n {
                        incomplete += 1;
                    }
                }
                None => incomplete += 1,
            }
        }
    }
    first.sort_by(f64::total_cmp);
    last.sort_by(f64::total_cmp);
    let dropped = metric(port, "strom_quake_sse_dropped_total").await;
    println!(
        "{}: {connected_n} of {clients} SSE clients connected ({} failed, {dropped} dropped by the server); \
         {events} events at {rate}/s; map RSS {rss_before} KiB before the clients, {rss_connected} KiB with them \
         connected, {rss_after} KiB after the events; frame played to the FIRST client: p50 {:.1} ms, p99 {:.1} ms, \
         max {:.1} ms; to the LAST of the clients: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} events measured, \
         {incomplete} not received by every client); load before {load_before}, after {}",
        pipeline.describe(),
        failed.load(Ordering::SeqCst),
        quantile(&first, 0.5),
        quantile(&first, 0.99),
        quantile(&first, 1.0),
        quantile(&last, 0.5),
        quantile(&last, 0.99),
        quantile(&last, 1.0),
        last.len(),
        load()
    );
    for task in tasks {
        task.abort();
    }
    pipeline.stop().await;
    drop(stand_in);
    Ok(())
}
