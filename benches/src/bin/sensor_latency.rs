//! End-to-end latency of the sensor pipeline: readings published to MQTT at a
//! steady rate, through `collection`, `processing` and `db-loader` (release
//! binaries, as processes) into Postgres; the latency of a reading is the time
//! from its timestamp (set when it is published) to its row's `loaded_at`
//! (`now()` on the database's clock, which is this machine's: the start of the
//! row's transaction, a fraction of a millisecond before its commit).
//!
//! ```text
//! scripts/test-env.sh up
//! cargo build --release -p strom-services
//! cargo run --release -p strom-benches --bin sensor_latency -- [readings/s] [seconds]
//! ```
//!
//! Needs the Kafka-protocol broker (`STROM_BENCH_KAFKA`, default
//! 127.0.0.1:9092), Mosquitto on 127.0.0.1:1883 and PostgreSQL on 127.0.0.1:5432.
//!
//! `LATENCY_BROKER=memory` runs the same services in one process instead
//! (`strom-demo` on `memory://` with `DEMO_SYSTEMS=sensors`, with the same
//! Mosquitto and PostgreSQL):
//! the pipeline without the broker's share of the latency.
//!
//! The services' consumers fetch with `fetch.wait.max.ms` 2 unless
//! `STROM_KAFKA_FETCH_WAIT_MAX_MS` says otherwise: Tansu holds every fetch
//! for up to that long (half of it from 250 ms on), even with data waiting,
//! where Apache Kafka answers as soon as there is data. Their producers use
//! the services' `linger.ms` of 1 unless `STROM_KAFKA_LINGER_MS` says otherwise.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use stream_core::connect::mqtt::client_options;
use stream_core::connect::mqtt::rumqttc::{AsyncClient, QoS};
use stream_core::testing::TestDatabase;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const SENSORS: u32 = 10;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The services, killed when this is dropped.
struct Services(Vec<Child>);

impl Drop for Services {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn main() -> Res<()> {
    let mut args = std::env::args().skip(1);
    let rate: u32 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1_000);
    let seconds: u32 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(20);
    let broker = std::env::var("STROM_BENCH_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let fetch_wait = std::env::var("STROM_KAFKA_FETCH_WAIT_MAX_MS").unwrap_or_else(|_| "2".into());
    let linger = std::env::var("STROM_KAFKA_LINGER_MS").unwrap_or_else(|_| "1 (the services' default)".into());
    let run = format!("latency-{}-{}", std::process::id(), now_ms());
    let db = TestDatabase::named("latency");
    let bin_dir = std::env::current_exe()?.parent().ok_or("no exe dir")?.to_path_buf();
    let state = std::env::temp_dir().join(&run);
    let mqtt_prefix = format!("{run}/");
    let mut services = Services(Vec::new());
    let in_process = std::env::var("LATENCY_BROKER").is_ok_and(|b| b == "memory");
    let (names, broker_url): (&[&str], String) = if in_process {
        (&["strom-demo"], "memory://".into())
    } else {
        (&["db-loader", "processing", "collection"], format!("kafka://{broker}"))
    };
    for name in names {
        let path = bin_dir.join(name);
        if !path.exists() {
            return Err(format!("{} missing: cargo build --release -p strom-services", path.display()).into());
        }
        let child = Command::new(path)
            .env("STROM_BROKER", &broker_url)
            .env("STROM_TOPIC_PREFIX", format!("{run}-"))
            .env("STROM_WEB_PORT", "0")
            .env("STROM_STATE_DIR", state.join(name))
            .env("DATABASE_URL", db.url())
            .env("MQTT_URL", "mqtt://127.0.0.1:1883")
            .env("MQTT_TOPIC_PREFIX", &mqtt_prefix)
            .env("MQTT_CLIENT_ID", format!("{run}-collection"))
            .env("SIMULATOR_SENSORS", "0")
            .env("DEMO_SYSTEMS", "sensors")
            .env("RUST_LOG", "warn")
            .env("STROM_KAFKA_FETCH_WAIT_MAX_MS", &fetch_wait)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        services.0.push(child);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let options = client_options("mqtt://127.0.0.1:1883", &format!("{run}-publisher"))?;
        let (client, mut events) = AsyncClient::new(options, 10_000);
        tokio::spawn(async move { while events.poll().await.is_ok() {} });
        // A row is a (sensor, millisecond): two readings of one sensor in one
        // millisecond (ticks that fell behind come in a burst) would be one
        // row, so a sensor's next reading is stamped at least a millisecond later.
        let last_ms = std::cell::RefCell::new(vec![0_i64; SENSORS as usize + 1]);
        let publish = async |sensor: u32| {
            let topic = format!("{mqtt_prefix}sensors/{sensor}/temperature");
            let ts = {
                let mut last = last_ms.borrow_mut();
                let ts = now_ms().max(last[sensor as usize] + 1);
                last[sensor as usize] = ts;
                ts
            };
            let payload = format!(r#"{{"sensor": {sensor}, "temperature": 21.5, "unit": "C", "timestamp": {ts}}}"#);
            client.publish(topic, QoS::AtLeastOnce, false, payload).await
        };
        // Warm up until a reading makes it through (topics created, groups joined).
        let client_db = wait_for_database(&db).await?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            publish(1).await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            if measured(&client_db, 0).await > 0 {
                break;
            }
            if Instant::now() > deadline {
                return Err("no reading reached the database within two minutes".into());
            }
        }
        let start_ms = now_ms();
        // `rate` readings a second, in ticks of 10 ms, over the sensors.
        let per_tick = (rate / 100).max(1);
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut sent = 0u64;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(u64::from(seconds)) {
            tick.tick().await;
            for i in 0..per_tick {
                publish(1 + (sent as u32 + i) % SENSORS).await?;
            }
            sent += u64::from(per_tick);
        }
        let publish_s = started.elapsed().as_secs_f64();
        let deadline = Instant::now() + Duration::from_secs(300);
        let loaded = loop {
            let n = measured(&client_db, start_ms).await;
            if n >= sent || Instant::now() > deadline {
                break n;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        // The whole way, and its first hop: MQTT publish to collection's receipt.
        let quantiles = async |column: &str| -> Res<(f64, f64, f64)> {
            let row = client_db
                .query_one(
                    &format!(
                        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY l), \
                         percentile_cont(0.99) WITHIN GROUP (ORDER BY l), max(l) \
                         FROM (SELECT ({column} - timestamp_ms)::float8 AS l FROM temperature \
                         WHERE timestamp_ms >= $1) AS latencies"
                    ),
                    &[&start_ms],
                )
                .await?;
            Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
        };
        let (p50, p99, max) = quantiles("extract(epoch FROM loaded_at) * 1000").await?;
        let (mqtt50, mqtt99, mqtt_max) = quantiles("received_ms").await?;
        println!(
            "published {sent} readings in {publish_s:.1} s ({:.0}/s) on {broker_url} (fetch.wait.max.ms={fetch_wait}, linger.ms={linger}), {loaded} loaded; MQTT publish to Postgres row: \
             p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms (of which MQTT publish to collection: \
             p50 {mqtt50:.1} ms, p99 {mqtt99:.1} ms, max {mqtt_max:.1} ms)",
            sent as f64 / publish_s
        );
        Ok::<(), Box<dyn std::error::Error>>(())
    })?;
    drop(services);
    let _ = std::fs::remove_dir_all(&state);
    Ok(())
}

/// Waits until db-loader created the database, and connects to it.
async fn wait_for_database(db: &TestDatabase) -> Res<stream_core::connect::postgres::tokio_postgres::Client> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(client) = db.connect().await {
            return Ok(client);
        }
        if Instant::now() > deadline {
            return Err("db-loader did not create its database within a minute".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn measured(client: &stream_core::connect::postgres::tokio_postgres::Client, since: i64) -> u64 {
    client
        .query_one("SELECT count(*) FROM temperature WHERE timestamp_ms >= $1", &[&since])
        .await
        .map_or(0, |r| r.get::<_, i64>(0) as u64)
}
