//! The floor under the sensor pipeline's latency: one hop through the broker
//! with raw rdkafka (a `ThreadedProducer` to a `BaseConsumer`), at a steady
//! rate, with the same client settings Strom uses. Each message carries the
//! time it was produced; its latency is the time it is consumed minus that.
//!
//! ```text
//! cargo run --release -p strom-benches --bin kafka_latency -- [messages/s] [seconds]
//! ```
//!
//! `STROM_BENCH_KAFKA` (default 127.0.0.1:9092); `FETCH_WAIT_MAX_MS` (default
//! 10) and `LINGER_MS` (default 5) set the clients' `fetch.wait.max.ms` and
//! `linger.ms`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, ThreadedProducer};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

fn main() -> Res<()> {
    let mut args = std::env::args().skip(1);
    let rate: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1_000);
    let seconds: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(15);
    let broker = std::env::var("STROM_BENCH_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let fetch_wait = std::env::var("FETCH_WAIT_MAX_MS").unwrap_or_else(|_| "10".into());
    let linger = std::env::var("LINGER_MS").unwrap_or_else(|_| "5".into());
    let topic = format!("kafka-latency-{}-{}", std::process::id(), now_us());

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let admin: AdminClient<_> = ClientConfig::new().set("bootstrap.servers", &broker).create()?;
    let created = rt.block_on(admin.create_topics(
        &[NewTopic::new(&topic, 4, TopicReplication::Fixed(1))],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
    ))?;
    for r in created {
        r.map_err(|(t, e)| format!("creating {t}: {e}"))?;
    }

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker)
        .set("group.id", &topic)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", &fetch_wait)
        .create()?;
    consumer.subscribe(&[&topic])?;
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &broker)
        .set("linger.ms", &linger)
        .set("partitioner", "murmur2_random")
        .create()?;
    // Wait for the assignment before producing.
    let deadline = Instant::now() + Duration::from_secs(60);
    while consumer.assignment()?.count() == 0 {
        consumer.poll(Duration::from_millis(100));
        if Instant::now() > deadline {
            return Err("no assignment within a minute".into());
        }
    }

    let total = rate * seconds;
    let producing = std::thread::spawn(move || {
        let started = Instant::now();
        for i in 0..total {
            let due = started + Duration::from_micros(i * 1_000_000 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let payload = now_us().to_string();
            let key = (i % 10).to_string();
            let mut record = BaseRecord::to(&topic).key(&key).payload(&payload);
            while let Err((_, r)) = producer.send(record) {
                record = r;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let _ = rdkafka::producer::Producer::flush(&producer, Duration::from_secs(30));
    });

    let mut latencies = Vec::with_capacity(total as usize);
    let deadline = Instant::now() + Duration::from_secs(seconds + 60);
    while (latencies.len() as u64) < total && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let sent: i64 =
                m.payload().and_then(|p| std::str::from_utf8(p).ok()).and_then(|s| s.parse().ok()).unwrap_or(0);
            latencies.push((now_us() - sent) as f64 / 1000.0);
        }
    }
    producing.join().map_err(|_| "the producer thread panicked")?;
    latencies.sort_by(f64::total_cmp);
    let q = |p: f64| latencies.get(((latencies.len() as f64 - 1.0) * p) as usize).copied().unwrap_or(f64::NAN);
    println!(
        "{} of {total} messages at {rate}/s, fetch.wait.max.ms={fetch_wait}, linger.ms={linger}: produce to consume \
         p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies.len(),
        q(0.5),
        q(0.99),
        q(1.0)
    );
    Ok(())
}
