//! The earthquake pipeline's latency to Postgres: the project's EMSC stand-in
//! plays synthetic new events (unique `unid`s, origin time and `lastupdate`
//! now) at a steady rate to quake-source, which sends them to `quakes.raw`,
//! which quake-loader upserts into the table `quakes`. An event's latency is
//! its row's `loaded_at` (`now()` on the database's clock, which is this
//! machine's: the start of the row's transaction, a fraction of a millisecond
//! before its commit) minus the time the stand-in was told to play its frame.
//!
//! ```text
//! scripts/test-env.sh up
//! cargo build --release -p strom-benches -p strom-services
//! target/release/quake_latency [events/s] [events]
//! ```
//!
//! quake-source and quake-loader are the release binaries, as processes, on
//! the Kafka-protocol broker (`STROM_BENCH_KAFKA`, default 127.0.0.1:9092)
//! with topics of their own, and PostgreSQL (`STROM_TEST_POSTGRES`, default
//! postgres://postgres@127.0.0.1:5432) with a database of their own, dropped
//! afterwards. Their consumers fetch with `fetch.wait.max.ms` 2 unless
//! `STROM_KAFKA_FETCH_WAIT_MAX_MS` says otherwise (Tansu holds every fetch
//! that long, even with data waiting).

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use stream_core::connect::postgres::tokio_postgres;
use stream_core::testing::TestDatabase;
use strom_benches::quake::{Res, Service, fetch_wait, kafka_broker, load, quantile, synthetic};
use strom_services::quake::emsc::EmscStandIn;

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

async fn count(client: &tokio_postgres::Client, pattern: &str) -> i64 {
    client
        .query_one("SELECT count(*) FROM quakes WHERE unid LIKE $1", &[&pattern])
        .await
        .map_or(0, |r| r.get::<_, i64>(0))
}

fn main() -> Res<()> {
    let mut args = std::env::args().skip(1);
    let rate: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(100);
    let events: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(3000);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(run(rate, events))
}

async fn run(rate: u64, events: u64) -> Res<()> {
    let load_before = load();
    let run = format!("quake-latency-{}-{}", std::process::id(), now_us() / 1000);
    let db = TestDatabase::named("quake_latency");
    let stand_in = EmscStandIn::start("127.0.0.1:0").await?;
    let env = |extra: (&'static str, String)| {
        vec![
            ("STROM_BROKER", format!("kafka://{}", kafka_broker())),
            ("STROM_TOPIC_PREFIX", format!("{run}-")),
            ("STROM_KAFKA_FETCH_WAIT_MAX_MS", fetch_wait()),
            extra,
        ]
    };
    let loader = Service::start("quake-loader", &env(("DATABASE_URL", db.url())))?;
    let source = Service::start("quake-source", &env(("EMSC_URL", stand_in.url())))?;
    stand_in.wait_for_clients(1, Duration::from_secs(60)).await?;

    // The loader creates its database; then warm up until an event makes it through.
    let deadline = Instant::now() + Duration::from_secs(120);
    let client = loop {
        if let Ok(client) = db.connect().await
            && client.query_one("SELECT count(*) FROM quakes", &[]).await.is_ok()
        {
            break client;
        }
        if Instant::now() > deadline {
            return Err(format!("quake-loader did not create its table within two minutes: {}", loader.log()).into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let warm = format!("{run}-warm");
    let mut i = 0;
    while count(&client, &format!("{warm}_%")).await == 0 {
        stand_in.play(synthetic(&warm, i).to_emsc().to_string());
        i += 1;
        if Instant::now() > deadline {
            return Err("no event reached the table within two minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // `events` events at `rate` a second; the time each was played.
    let main = format!("{run}-main");
    let mut played: HashMap<String, i64> = HashMap::with_capacity(events as usize);
    let started = Instant::now();
    for i in 0..events {
        let due = started + Duration::from_micros(i * 1_000_000 / rate.max(1));
        tokio::time::sleep_until(due.into()).await;
        let quake = synthetic(&main, i);
        let frame = quake.to_emsc().to_string();
        played.insert(quake.unid, now_us());
        stand_in.play(frame);
    }
    let play_s = started.elapsed().as_secs_f64();
    let pattern = format!("{main}_%");
    let deadline = Instant::now() + Duration::from_secs(120);
    while count(&client, &pattern).await < events as i64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rows = client
        .query(
            "SELECT unid, (extract(epoch FROM loaded_at) * 1000000)::float8::int8 FROM quakes WHERE unid LIKE $1",
            &[&pattern],
        )
        .await?;
    let mut latencies: Vec<f64> = rows
        .iter()
        .filter_map(|r| {
            let unid: String = r.get(0);
            let loaded: i64 = r.get(1);
            played.get(&unid).map(|p| (loaded - p) as f64 / 1000.0)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    println!(
        "{events} events played in {play_s:.1} s ({:.0}/s) to quake-source -> kafka://{} (fetch.wait.max.ms={}) -> \
         quake-loader -> PostgreSQL, {} rows; frame played to row's loaded_at: p50 {:.1} ms, p99 {:.1} ms, \
         max {:.1} ms, min {:.1} ms; load before {load_before}, after {}",
        events as f64 / play_s,
        kafka_broker(),
        fetch_wait(),
        latencies.len(),
        quantile(&latencies, 0.5),
        quantile(&latencies, 0.99),
        quantile(&latencies, 1.0),
        quantile(&latencies, 0.0),
        load()
    );
    drop(client);
    drop(source);
    drop(loader);
    // The database was the run's own.
    if let Ok((admin, connection)) =
        tokio_postgres::connect(&format!("{}/postgres", db.server()), tokio_postgres::NoTls).await
    {
        tokio::spawn(connection);
        let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", db.name())).await;
    }
    Ok(())
}
