//! The throughput harness: in one run against one broker, with the same input,
//! (a) a raw rdkafka consume → transform → produce loop, (b) Strom's `relay`
//! and (c) an agent that updates a table per event (count and the last 10
//! readings of each key, with its changelog); prints msgs/s and CPU per
//! message of each and the ratios b/a and c/a. Then the tables' recovery:
//! the warm restart time of a table of 1,000,000 keys, the cold recovery
//! rate of the same table into an empty state directory (and a raw rdkafka
//! consumer's read of the same changelog); and the resident
//! memory of an idle `relay` worker process.
//!
//! ```text
//! cargo build --release -p strom-examples --bin relay
//! cargo run --release -p strom-benches --bin throughput -- [messages] [rounds]
//! ```
//!
//! The broker is `STROM_BENCH_KAFKA` (default 127.0.0.1:9092). Both loops do
//! the same work per message: parse the JSON object, add `"relayed": true`,
//! serialize, produce with the same key, and commit consumed offsets (the raw
//! loop commits its position every second, as an at-least-once consumer
//! would). Each loop is timed from its first message consumed to its last
//! message acknowledged by the broker; rounds alternate which loop goes first,
//! so both see the same machine and broker load, and the best round of each is
//! reported.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use serde_json::{Map, Value};
use stream_core::prelude::*;
use strom_benches::{FILL_BLOCK, Filler, filler};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> Res<()> {
    let mut args = std::env::args().skip(1);
    let messages: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(200_000);
    let rounds: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(3);
    let servers = std::env::var("STROM_BENCH_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let run = format!("bench-{}-{}", std::process::id(), now_ms());
    stream_core::init_logging();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;

    println!("broker {servers}, {messages} messages of ~100 B on 4 partitions, {rounds} round(s)");
    let mut raw_best: Option<Measure> = None;
    let mut strom_best: Option<Measure> = None;
    let mut table_best: Option<Measure> = None;
    let state = std::env::temp_dir().join(format!("{run}-state"));
    for round in 0..rounds {
        let prefix = format!("{run}-{round}-");
        let input = format!("{prefix}relay.in");
        create(&servers, &[&input, &format!("{prefix}raw.out")])?;
        fill(&servers, &input, messages)?;
        eprintln!("round {}: input written", round + 1);
        // Alternate which loop goes first, so neither always meets a fresher broker.
        let (raw, strom) = if round % 2 == 0 {
            let raw = raw_loop(&servers, &input, &format!("{prefix}raw.out"), &format!("{prefix}raw"), messages)?;
            (raw, rt.block_on(strom_relay(&servers, &prefix, messages))?)
        } else {
            let strom = rt.block_on(strom_relay(&servers, &prefix, messages))?;
            (raw_loop(&servers, &input, &format!("{prefix}raw.out"), &format!("{prefix}raw"), messages)?, strom)
        };
        let table = rt.block_on(table_agent(&servers, &prefix, &state.join(&prefix), messages))?;
        println!(
            "round {}: raw {:>9.0} msg/s {:>5.2} µs CPU/msg | relay {:>9.0} msg/s {:>5.2} µs CPU/msg | ratio {:.3} \
             | table {:>9.0} msg/s {:>5.2} µs CPU/msg | ratio {:.3}",
            round + 1,
            raw.rate(),
            raw.cpu_per_msg_us(),
            strom.rate(),
            strom.cpu_per_msg_us(),
            strom.rate() / raw.rate(),
            table.rate(),
            table.cpu_per_msg_us(),
            table.rate() / raw.rate(),
        );
        if table_best.as_ref().is_none_or(|b| table.rate() > b.rate()) {
            table_best = Some(table);
        }
        if raw_best.as_ref().is_none_or(|b| raw.rate() > b.rate()) {
            raw_best = Some(raw);
        }
        if strom_best.as_ref().is_none_or(|b| strom.rate() > b.rate()) {
            strom_best = Some(strom);
        }
    }
    if let (Some(raw), Some(strom)) = (&raw_best, strom_best) {
        println!(
            "best: raw {:.0} msg/s ({:.2} µs CPU/msg), relay {:.0} msg/s ({:.2} µs CPU/msg); \
             throughput ratio b/a = {:.3}, CPU ratio b/a = {:.2}",
            raw.rate(),
            raw.cpu_per_msg_us(),
            strom.rate(),
            strom.cpu_per_msg_us(),
            strom.rate() / raw.rate(),
            strom.cpu_per_msg_us() / raw.cpu_per_msg_us()
        );
    }
    if let Some(table) = table_best {
        let raw = raw_best.as_ref().map_or(f64::NAN, Measure::rate);
        println!(
            "best: table agent {:.0} msg/s ({:.2} µs CPU/msg); throughput ratio c/a = {:.3}",
            table.rate(),
            table.cpu_per_msg_us(),
            table.rate() / raw
        );
    }
    let warm = rt.block_on(warm_restart(&servers, &format!("{run}-warm-"), &state.join("warm"), 1_000_000))?;
    println!(
        "warm restart of a {}-key table: recovery {:.3} s replaying {} records; start to ready {:.2} s",
        warm.keys,
        warm.recovery.as_secs_f64(),
        warm.replayed,
        warm.ready.as_secs_f64()
    );
    // Cold recovery: the same table into an empty state directory.
    let (replayed, took) = rt.block_on(recover_cold(&servers, &format!("{run}-warm-"), &state.join("cold")))?;
    let (raw_read, raw_took) = read_all(&servers, &warm.changelog)?;
    println!(
        "cold recovery: {replayed} changelog records in {:.2} s = {:.0} records/s; a raw rdkafka consumer reads \
         the same {raw_read} records in {:.2} s = {:.0} records/s; ratio {:.3}",
        took.as_secs_f64(),
        replayed as f64 / took.as_secs_f64(),
        raw_took.as_secs_f64(),
        raw_read as f64 / raw_took.as_secs_f64(),
        (replayed as f64 / took.as_secs_f64()) / (raw_read as f64 / raw_took.as_secs_f64()),
    );
    let _ = std::fs::remove_dir_all(&state);
    match idle_rss(&servers, &format!("{run}-idle-")) {
        Ok(kib) => println!("idle relay worker: {:.1} MiB resident", kib as f64 / 1024.0),
        Err(e) => println!("idle relay worker: not measured ({e})"),
    }
    Ok(())
}

fn now_ms() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

struct Measure {
    messages: usize,
    elapsed: Duration,
    cpu: Duration,
}

impl Measure {
    fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }
    fn cpu_per_msg_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.messages as f64
    }
}

/// CPU time of this process so far (all threads), from /proc/self/stat.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name: state is field 3; utime, stime are 14, 15.
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10) // CLK_TCK is 100 on Linux
}

fn client(servers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", servers);
    c
}

fn producer(servers: &str) -> Res<ThreadedProducer<DefaultProducerContext>> {
    Ok(client(servers).set("linger.ms", "5").set("partitioner", "murmur2_random").create()?)
}

/// Creates topics with 4 partitions.
fn create(servers: &str, topics: &[&str]) -> Res<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let admin: rdkafka::admin::AdminClient<_> = client(servers).create()?;
    let new: Vec<_> = topics
        .iter()
        .map(|t| rdkafka::admin::NewTopic::new(t, 4, rdkafka::admin::TopicReplication::Fixed(1)))
        .collect();
    rt.block_on(admin.create_topics(&new, &rdkafka::admin::AdminOptions::new()))?;
    Ok(())
}

/// Writes `n` JSON objects to `topic`.
fn fill(servers: &str, topic: &str, n: usize) -> Res<()> {
    let p = producer(servers)?;
    for i in 0..n {
        let value =
            format!(r#"{{"id":{i},"sensor":"s-{}","reading":{}.5,"note":"padding to a hundred"}}"#, i % 97, i % 40);
        let key = format!("k{}", i % 101);
        let mut record = BaseRecord::to(topic).key(&key).payload(&value);
        loop {
            match p.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    p.flush(Duration::from_secs(60))?;
    Ok(())
}

fn relayed(payload: &[u8]) -> Option<Vec<u8>> {
    let mut map: Map<String, Value> = serde_json::from_slice(payload).ok()?;
    map.get("id")?.as_i64()?;
    map.insert("relayed".into(), Value::Bool(true));
    serde_json::to_vec(&map).ok()
}

/// (a) BaseConsumer → transform → ThreadedProducer, committing every second.
fn raw_loop(servers: &str, input: &str, output: &str, group: &str, n: usize) -> Res<Measure> {
    let consumer: BaseConsumer = client(servers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[input])?;
    let p = producer(servers)?;
    let mut seen = 0;
    let mut started = None;
    let mut last_commit = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(600);
    while seen < n && Instant::now() < deadline {
        let Some(m) = consumer.poll(Duration::from_millis(100)) else { continue };
        let m = m?;
        started.get_or_insert_with(|| (Instant::now(), cpu_time()));
        seen += 1;
        if let Some(value) = m.payload().and_then(relayed) {
            let mut record = BaseRecord::to(output).payload(&value);
            if let Some(k) = m.key() {
                record = record.key(k);
            }
            while let Err((_, back)) = p.send(record) {
                record = back;
                p.poll(Duration::from_millis(1));
            }
        }
        consumer.store_offset_from_message(&m).ok();
        if last_commit.elapsed() >= Duration::from_secs(1) {
            consumer.commit_consumer_state(CommitMode::Async).ok();
            last_commit = Instant::now();
        }
    }
    let (t0, c0) = started.ok_or("the raw loop read nothing")?;
    let handled = t0.elapsed();
    p.flush(Duration::from_secs(60))?;
    eprintln!("raw: handled all in {handled:?}, acknowledged all in {:?}", t0.elapsed());
    consumer.commit_consumer_state(CommitMode::Sync).ok();
    Ok(Measure { messages: seen, elapsed: t0.elapsed(), cpu: cpu_time() - c0 })
}

/// An app on the benchmark's broker, under the run's topic prefix.
fn kafka_app(id: &str, servers: &str, prefix: &str) -> stream_core::AppBuilder {
    App::builder(id).broker(format!("kafka://{servers}")).topic_prefix(prefix).without_web()
}

/// (b) Strom's relay, in this process, on the same input.
async fn strom_relay(servers: &str, prefix: &str, n: usize) -> Res<Measure> {
    let app = kafka_app("relay", servers, prefix).env()?.build()?;
    strom_examples::relay::build(&app);
    let worker = app.start().await?;
    let stats = worker.agent_stats("relay").ok_or("no relay agent")?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while stats.received.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let (t0, c0) = (Instant::now(), cpu_time());
    let mut report = Instant::now();
    while (stats.processed.load(Ordering::Relaxed) as usize) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
        if report.elapsed() > Duration::from_secs(5) {
            report = Instant::now();
            eprintln!(
                "relay: {} received, {} processed",
                stats.received.load(Ordering::Relaxed),
                stats.processed.load(Ordering::Relaxed)
            );
        }
    }
    let handled = t0.elapsed();
    // Done means acknowledged by the broker.
    app.flush(Duration::from_secs(60)).await?;
    eprintln!("relay: handled all in {handled:?}, acknowledged all in {:?}", t0.elapsed());
    let measure = Measure { messages: n, elapsed: t0.elapsed(), cpu: cpu_time() - c0 };
    worker.stop().await?;
    Ok(measure)
}

/// The app of (c): per event, the key's count and its last 10 readings in
/// the table `stats`.
fn table_app(servers: &str, prefix: &str, id: &str, state: &std::path::Path) -> Res<(App, Table<String, KeyStats>)> {
    let app = kafka_app(id, servers, prefix).state_dir(state).env()?.build()?;
    let input = app.topic::<String, Value>("relay.in").partitions(4);
    let stats = app.table::<String, KeyStats>("stats", &input);
    let table = stats.clone();
    app.agent("stats", &input, move |mut events| {
        let stats = table.clone();
        async move {
            while let Some(e) = events.next().await {
                let Some(key) = e.key() else { continue };
                let reading = e.value().get("reading").and_then(Value::as_f64).unwrap_or(0.0);
                stats
                    .at(&e)?
                    .update(key, |s| {
                        let mut s = s.unwrap_or_default();
                        s.count += 1;
                        s.last.push(reading);
                        if s.last.len() > 10 {
                            s.last.remove(0);
                        }
                        s.average = s.last.iter().sum::<f64>() / s.last.len() as f64;
                        s
                    })
                    .await?;
            }
            Ok(())
        }
    });
    Ok((app, stats))
}

/// A key's count and the average of its last 10 readings.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct KeyStats {
    count: u64,
    last: Vec<f64>,
    average: f64,
}

impl Payload for KeyStats {
    type Codec = stream_core::codec::Json;
}

/// (c) The table agent, in this process, on the same input.
async fn table_agent(servers: &str, prefix: &str, state: &std::path::Path, n: usize) -> Res<Measure> {
    let (app, _stats) = table_app(servers, prefix, "tables", state)?;
    let worker = app.start().await?;
    let stats = worker.agent_stats("stats").ok_or("no stats agent")?;
    let measure = measure_agent(&app, &stats, n).await?;
    worker.stop().await?;
    Ok(measure)
}

/// Times an agent from its first event received to its `n`th processed and
/// everything it sent acknowledged.
async fn measure_agent(app: &App, stats: &stream_core::AgentStats, n: usize) -> Res<Measure> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while stats.received.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let (t0, c0) = (Instant::now(), cpu_time());
    while (stats.processed.load(Ordering::Relaxed) as usize) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Done means acknowledged by the broker.
    app.flush(Duration::from_secs(60)).await?;
    Ok(Measure { messages: n, elapsed: t0.elapsed(), cpu: cpu_time() - c0 })
}

/// Recovers (c)'s table of the run `prefix` into an empty state directory:
/// the records replayed and the time the recoveries took.
async fn recover_cold(servers: &str, prefix: &str, state: &std::path::Path) -> Res<(u64, Duration)> {
    // The warm restart's app (so the same changelog and group, committed to
    // the end), alone in its group, so it recovers every partition. The four
    // partitions recover side by side: the time is from start to ready.
    let (app, _fill, table) = warm_app(servers, prefix, state)?;
    let started = Instant::now();
    let worker = app.start().await?;
    wait_ready(&worker).await?;
    let took = started.elapsed();
    let replayed = table.stats().replayed.load(Ordering::Relaxed);
    worker.stop().await?;
    Ok((replayed, took))
}

/// Reads every partition of `topic` from the start to its end with a plain
/// rdkafka consumer: how many records, how long.
fn read_all(servers: &str, topic: &str) -> Res<(u64, Duration)> {
    let consumer: BaseConsumer = client(servers)
        .set("group.id", format!("{topic}-raw-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        // As Strom's reader: Tansu holds every fetch for this long.
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..4 {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let started = Instant::now();
    let (mut read, mut ended) = (0u64, 0);
    while ended < 4 && started.elapsed() < Duration::from_secs(600) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => read += 1,
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => ended += 1,
            Some(Err(e)) => return Err(e.into()),
            None => {}
        }
    }
    Ok((read, started.elapsed()))
}

async fn wait_ready(worker: &stream_core::Worker) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while !worker.is_ready() {
        if Instant::now() > deadline {
            return Err("no assignment within 10 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

struct Warm {
    keys: usize,
    changelog: String,
    recovery: Duration,
    replayed: u64,
    ready: Duration,
}

fn warm_app(servers: &str, prefix: &str, state: &std::path::Path) -> Res<Filler> {
    Ok(filler(kafka_app("warm", servers, prefix).state_dir(state).env()?)?)
}

/// Fills a table with `keys` keys (events that each set 10,000 keys), stops
/// the worker cleanly and times the restart on the same state directory.
async fn warm_restart(servers: &str, prefix: &str, state: &std::path::Path, keys: usize) -> Res<Warm> {
    let (app, fill, table) = warm_app(servers, prefix, state)?;
    let worker = app.start().await?;
    wait_ready(&worker).await?;
    let blocks = (keys as u32).div_ceil(FILL_BLOCK);
    for block in 0..blocks {
        fill.send(&block, &block).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(900);
    while table.stats().writes.load(Ordering::Relaxed) < u64::from(blocks * FILL_BLOCK) {
        if Instant::now() > deadline {
            return Err("the table did not fill within 15 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.stop().await?;
    drop((app, fill, table));

    let (app, _fill, table) = warm_app(servers, prefix, state)?;
    let started = Instant::now();
    let worker = app.start().await?;
    wait_ready(&worker).await?;
    let ready = started.elapsed();
    let warm = Warm {
        keys: (blocks * FILL_BLOCK) as usize,
        changelog: table.changelog_topic().to_owned(),
        recovery: Duration::from_nanos(table.stats().recovery_ns.load(Ordering::Relaxed)),
        replayed: table.stats().replayed.load(Ordering::Relaxed),
        ready,
    };
    worker.stop().await?;
    Ok(warm)
}

/// Starts the release `relay` binary next to this one, lets it idle for five
/// seconds after its first assignment, and reads its resident set size.
fn idle_rss(servers: &str, prefix: &str) -> Res<u64> {
    let exe = std::env::current_exe()?;
    let relay = exe.parent().ok_or("no exe dir")?.join("relay");
    if !relay.exists() {
        return Err(format!("{} missing: cargo build --release -p strom-examples --bin relay", relay.display()).into());
    }
    let mut child = std::process::Command::new(&relay)
        .env("STROM_BROKER", format!("kafka://{servers}"))
        .env("STROM_TOPIC_PREFIX", prefix)
        .env("STROM_WEB_PORT", "0")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_secs(8));
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()))?;
    let _ = child.kill();
    let _ = child.wait();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| "no VmRSS".into())
}
