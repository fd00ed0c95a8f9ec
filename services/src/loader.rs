//! What db-loader does: the Postgres tables `temperature` and `average`, one
//! row per record of `sensors.processed` and `sensors.averages`, written in
//! batches by agents and exact under replays.
//!
//! Each table's key is `(sensor_num, timestamp_ms)`, and rows are inserted
//! with `ON CONFLICT DO NOTHING`: the events replayed after a crash (the
//! loader's own, or a stage's upstream that sends a record again) add no row,
//! and the first row written for a key stays. For `average` that matters
//! twice: aggregation emits one average per reading, keyed by the reading's
//! time, and an average recomputed after *its* crash may count a reading
//! twice; the first one written, computed before the crash, is the one kept.
//! (Two readings of one sensor with the same millisecond are one row.)
//!
//! The one-process demo keeps the same rows in an [`Embedded`] database
//! instead of Postgres, with the same keys and the same first-write-wins rule.
//!
//! Metrics: `strom_rows_loaded_total{table}` (rows added; replayed rows are
//! not counted) and the histogram `strom_sensor_to_db_latency_seconds`, from
//! the sensor's timestamp to the commit of the row's batch.

use std::time::{SystemTime, UNIX_EPOCH};

use stream_core::connect::postgres::{PgError, PgSink, Postgres, ToRow};
use stream_core::metrics::prometheus_client::metrics::counter::Counter;
use stream_core::metrics::prometheus_client::metrics::family::Family;
use stream_core::metrics::prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use stream_core::prelude::*;

use crate::embedded::Embedded;
use crate::records::{Average, Temperature};
use crate::topics;

/// The database when `DATABASE_URL` is not set.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/strom";

/// The tables, created on start when missing. Sensor numbers and times are
/// `bigint` (a `u32` sensor number fits; times are the records' epoch
/// milliseconds, exact); `loaded_at` is when the row was written (`now()`:
/// the start of its transaction, a fraction of a millisecond before the commit).
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS temperature (
    sensor_num   bigint           NOT NULL,
    timestamp_ms bigint           NOT NULL,
    value        double precision NOT NULL,
    received_ms  bigint           NOT NULL,
    loaded_at    timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (sensor_num, timestamp_ms)
);
CREATE TABLE IF NOT EXISTS average (
    sensor_num   bigint           NOT NULL,
    timestamp_ms bigint           NOT NULL,
    value        double precision NOT NULL,
    count        bigint           NOT NULL,
    loaded_at    timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (sensor_num, timestamp_ms)
)";

/// `DATABASE_URL`, else [`DEFAULT_DATABASE_URL`].
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned())
}

/// The Postgres database at `url` (a `DATABASE_URL`), its connector's
/// metrics on the app's registry. The database (when missing) and
/// [`SCHEMA`] are created as soon as Postgres answers, in the background,
/// and before the first insert in any case: the service starts at once, and
/// its agents wait for Postgres while it cannot be reached.
pub async fn postgres(app: &App, url: &str) -> Result<Database, PgError> {
    postgres_with(app, url, SCHEMA)
}

/// A loader's Postgres database at `url` with its `schema`, as
/// [`postgres`] says (the earthquake loader's too).
pub fn postgres_with(app: &App, url: &str, schema: &str) -> Result<Database, PgError> {
    let db = Postgres::connect_lazy(url)?.create_database_if_missing().with_schema(schema);
    db.register_metrics(app.metrics());
    let early = db.clone();
    tokio::spawn(async move {
        if let Err(e) = early.schema_ready().await {
            tracing::error!(error = %e, "creating the schema failed");
        }
    });
    Ok(Database::Postgres(db))
}

/// db-loader's agents: every record of `sensors.processed` as a row of
/// `temperature`, every record of `sensors.averages` as a row of `average`.
pub fn load_all(app: &App, db: &Database) {
    let metrics = LoaderMetrics::register(app);
    load(app, "load-temperature", &topics::processed(app), db, &metrics);
    load(app, "load-average", &topics::averages(app), db, &metrics);
}

/// Where the rows go: Postgres, or the embedded database of the one-process demo.
#[derive(Clone, Debug)]
pub enum Database {
    /// The tables [`SCHEMA`] creates.
    Postgres(Postgres),
    /// The same rows in the process.
    Embedded(Embedded),
}

/// A record that becomes one row of a table.
pub trait Row: Payload + Send + Sync + 'static {
    /// The table.
    const TABLE: &'static str;
    /// The columns [`values`](Row::values) fills, in order.
    const COLUMNS: &'static [&'static str];
    /// The row's values.
    fn values(&self) -> impl ToRow + 'static;
    /// The row as the API reads it: sensor number, timestamp (epoch ms) and value.
    fn point(&self) -> (u32, i64, f64);
    /// The sensor's timestamp, epoch milliseconds.
    fn sensor_time_ms(&self) -> i64;
}

impl Row for Temperature {
    const TABLE: &'static str = "temperature";
    const COLUMNS: &'static [&'static str] = &["sensor_num", "timestamp_ms", "value", "received_ms"];
    fn values(&self) -> impl ToRow + 'static {
        (i64::from(self.sensor_num), self.timestamp_ms, self.value, self.received_ms)
    }
    fn point(&self) -> (u32, i64, f64) {
        (self.sensor_num, self.timestamp_ms, self.value)
    }
    fn sensor_time_ms(&self) -> i64 {
        self.timestamp_ms
    }
}

impl Row for Average {
    const TABLE: &'static str = "average";
    const COLUMNS: &'static [&'static str] = &["sensor_num", "timestamp_ms", "value", "count"];
    fn values(&self) -> impl ToRow + 'static {
        (i64::from(self.sensor_num), self.timestamp_ms, self.value, i64::from(self.count))
    }
    fn point(&self) -> (u32, i64, f64) {
        (self.sensor_num, self.timestamp_ms, self.value)
    }
    fn sensor_time_ms(&self) -> i64 {
        self.timestamp_ms
    }
}

/// The loader's metrics, registered once per app.
#[derive(Clone, Debug)]
pub struct LoaderMetrics {
    rows: Family<Vec<(String, String)>, Counter>,
    latency: Histogram,
}

impl LoaderMetrics {
    /// Registers `strom_rows_loaded_total{table}` and
    /// `strom_sensor_to_db_latency_seconds` on `app`'s registry.
    pub fn register(app: &App) -> LoaderMetrics {
        let rows = app.metrics().register_once("rows_loaded", "Rows added to the database, by table", Family::default);
        let latency = app.metrics().register_once(
            "sensor_to_db_latency_seconds",
            "From a sensor's timestamp to its row being committed",
            // 5 ms to ~80 s.
            || Histogram::new(exponential_buckets(0.005, 2.0, 15)),
        );
        LoaderMetrics { rows, latency }
    }
}

/// How many events one insert takes at most. A batch is what has arrived
/// (`take_ready`): one row at a time when readings trickle in, so none waits
/// for a batch to fill, and larger batches as readings arrive during an insert.
const BATCH: usize = 500;

/// Declares the agent `name` that writes every record of `topic` as a row of
/// `R::TABLE` (which [`SCHEMA`] creates), a batch per insert. A batch's events
/// are committed once its rows are; while Postgres is down the agent waits
/// and retries.
pub fn load<R: Row>(app: &App, name: &str, topic: &Topic<u32, R>, db: &Database, metrics: &LoaderMetrics) {
    let sink = match db {
        Database::Postgres(pg) => Sink::Postgres(PgSink::new(pg, R::TABLE, R::COLUMNS).on_conflict_do_nothing()),
        Database::Embedded(embedded) => Sink::Embedded(embedded.clone()),
    };
    let rows = metrics.rows.get_or_create(&vec![("table".to_owned(), R::TABLE.to_owned())]).clone();
    let latency = metrics.latency.clone();
    app.agent(name, topic, move |events| {
        let (sink, rows, latency) = (sink.clone(), rows.clone(), latency.clone());
        async move {
            let mut batches = events.take_ready(BATCH);
            while let Some(batch) = batches.next().await {
                let added = sink.insert(&batch).await?;
                rows.inc_by(added);
                // A batch that added nothing was all replay: its rows were committed long ago.
                if added > 0 {
                    let now = epoch_ms(SystemTime::now());
                    for event in &batch {
                        let age = now.saturating_sub(event.value().sensor_time_ms());
                        latency.observe(age.max(0) as f64 / 1000.0);
                    }
                }
            }
            Ok(())
        }
    });
}

/// Where one table's rows go.
#[derive(Clone)]
enum Sink {
    Postgres(PgSink),
    Embedded(Embedded),
}

impl Sink {
    /// Writes the batch's rows and returns how many were new.
    async fn insert<R: Row>(&self, batch: &[Event<u32, R>]) -> Result<u64, BoxError> {
        Ok(match self {
            Sink::Postgres(sink) => sink.insert(batch.iter().map(|e| e.value().values())).await?,
            Sink::Embedded(db) => db.insert(R::TABLE, batch.iter().map(|e| e.value().point())).await?,
        })
    }
}

fn epoch_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
