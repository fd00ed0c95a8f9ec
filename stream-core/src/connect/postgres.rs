//! A Postgres sink (cargo feature `postgres`): batched, retried while the
//! database is away, idempotent under replays.
//!
//! [`Postgres`] is a handle on one database (a URL such as
//! `postgres://postgres@127.0.0.1:5432/strom`, usually `DATABASE_URL`) with a
//! small pool of connections that are opened on first use and opened again
//! after the server went away. [`PgSink`] writes rows into one table: each call
//! to [`PgSink::insert`] is one multi-row `INSERT` (one transaction when a batch
//! needs several statements) that resolves only once the rows are committed.
//! Each connection prepares an `INSERT` once per number of rows and keeps it.
//!
//! **TLS** as libpq does it: with the URL's `sslmode` (`prefer` by default,
//! `require`, `disable`, `verify-ca`, `verify-full`), encrypted when the
//! server offers it, and the server's certificate verified against the CA
//! file in `PGSSLROOTCERT` when that is set, or with `verify-ca` /
//! `verify-full` (see [`parse`] and [`tls_with`]).
//!
//! **While the database is down** (refused or lost connections, a server
//! starting up or shutting down, too many connections, serialization failures
//! and deadlocks) a call logs the failure, waits (100 ms doubling to 5 s by
//! default) and tries again, for as long as it takes: the agent waits, its
//! events are not committed, and the stream backs up through Strom's
//! backpressure. Nothing is dropped. **Any other error** (a syntax error, a
//! missing table or column, a constraint violation, a value of the wrong type)
//! fails the call at once with [`PgError::Rejected`], so the agent's
//! [`ErrorPolicy`](crate::ErrorPolicy) applies: retries, then the dead-letter
//! topic, or a stop.
//!
//! **Replays.** After a crash the events since the last commit are handled
//! again, so their rows are inserted again. Give the table a unique key and
//! the sink [`on_conflict_do_nothing`](PgSink::on_conflict_do_nothing) (or an
//! [`on_conflict`](PgSink::on_conflict) clause that updates) and a replay
//! leaves one row per key.
//!
//! ```no_run
//! use std::time::{Duration, UNIX_EPOCH};
//! use serde::{Deserialize, Serialize};
//! use stream_core::connect::postgres::{PgSink, Postgres};
//! use stream_core::prelude::*;
//!
//! #[derive(Record, Serialize, Deserialize, Clone, Debug)]
//! struct Reading {
//!     #[record(key)]
//!     sensor_num: i32,
//!     #[record(timestamp)]
//!     ts_ms: i64,
//!     celsius: f64,
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let app = App::builder("db-loader").broker("memory://").build()?;
//! let readings = app.topic::<i32, Reading>("sensors.processed");
//!
//! let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/strom".into());
//! let db = Postgres::connect_lazy(&url)?.create_database_if_missing();
//! db.register_metrics(app.metrics());
//! db.ensure_schema(
//!     "CREATE TABLE IF NOT EXISTS temperature (
//!          sensor_num integer NOT NULL,
//!          ts timestamptz NOT NULL,
//!          value double precision NOT NULL,
//!          PRIMARY KEY (sensor_num, ts))",
//! )
//! .await?; // retried until the database answers
//! let rows = PgSink::new(&db, "temperature", &["sensor_num", "ts", "value"]).on_conflict_do_nothing();
//!
//! app.agent("load-temperature", &readings, move |events| {
//!     let rows = rows.clone();
//!     async move {
//!         let mut batches = events.take(500, Duration::from_millis(50));
//!         while let Some(batch) = batches.next().await {
//!             // One INSERT per batch; the batch is committed only after it returns.
//!             rows.insert(batch.iter().map(|e| {
//!                 let r = e.value();
//!                 (r.sensor_num, UNIX_EPOCH + Duration::from_millis(r.ts_ms as u64), r.celsius)
//!             }))
//!             .await?;
//!         }
//!         Ok(())
//!     }
//! });
//! app.main().await?;
//! # Ok(()) }
//! ```
//!
//! Rows are tuples of up to 12 values of any [`ToSql`] type (`i32`, `i64`,
//! `f64`, `String`, `&str`, `bool`, `SystemTime`, `Option<T>`, ...), or a
//! [`DynRow`] when the columns are only known at run time. A value whose type
//! does not fit its column (an `i64` for an `integer` column) is rejected, not
//! converted.

use std::error::Error as _;
use std::future::Future;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, Statement};

/// The TLS connector [`tls_with`] makes (postgres-openssl's).
pub use postgres_openssl::MakeTlsConnector;
/// The Postgres client library, for its types (`tokio_postgres::types`).
pub use tokio_postgres;
/// A value that can be a query parameter.
pub use tokio_postgres::types::ToSql;

use crate::metrics::Metrics;
use crate::tracking::lock;

/// What the Postgres connector reports when retrying cannot help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgError {
    /// The database URL could not be parsed. (The URL itself is not repeated:
    /// it may hold a password.)
    #[error("invalid database URL: {reason}")]
    Url {
        /// What is wrong with it.
        reason: String,
    },
    /// TLS could not be set up (a CA file in `PGSSLROOTCERT` that cannot be read).
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The database answered with an error that retrying would only repeat: a
    /// syntax error, a missing table or column, a constraint violation, a
    /// value of the wrong type, failed authentication.
    #[error("postgres rejected {what}: {reason}")]
    Rejected {
        /// What was being done, e.g. `the insert into temperature`.
        what: String,
        /// The server's message (`ERROR: ... (SQLSTATE 42601)`), or the client's.
        reason: String,
        /// The client library's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A row had another number of values than the sink has columns.
    #[error("the insert into {table}: row {row} has {got} values for {expected} columns")]
    RowWidth {
        /// The table.
        table: String,
        /// The row's index in the batch.
        row: usize,
        /// Its number of values.
        got: usize,
        /// The number of columns.
        expected: usize,
    },
}

impl PgError {
    /// The SQLSTATE of a rejection by the server (`"42601"` for a syntax
    /// error, `"23505"` for a unique violation, ...).
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            PgError::Rejected { source, .. } => source.code().map(SqlState::code),
            _ => None,
        }
    }
}

/// A handle on one Postgres database: its address, a small pool of
/// connections opened on demand, the retry policy and the metrics. Cheap to
/// clone; clones share all of it.
#[derive(Clone)]
pub struct Postgres {
    settings: Arc<Settings>,
    pool: Arc<Mutex<Vec<Conn>>>,
    metrics: PgMetrics,
    /// Set once [`Settings::schema`] was created.
    schema_ready: Arc<tokio::sync::OnceCell<()>>,
}

#[derive(Clone)]
struct Settings {
    config: Config,
    tls: MakeTlsConnector,
    first_backoff: Duration,
    max_backoff: Duration,
    create_database: bool,
    /// The schema created before the first insert ([`Postgres::with_schema`]).
    schema: Option<Arc<str>>,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the config: it may hold a password.
        f.debug_struct("Postgres")
            .field("host", &self.settings.config.get_hosts())
            .field("dbname", &self.settings.config.get_dbname())
            .finish_non_exhaustive()
    }
}

/// How many idle connections the pool keeps.
const MAX_IDLE: usize = 8;
/// How many prepared statements a connection keeps (a sink's `INSERT` has one
/// text per number of rows in a batch); the cache starts afresh when full.
const MAX_STATEMENTS: usize = 64;

/// A pooled connection and the statements prepared on it, by text: an
/// `INSERT` is parsed and planned once per connection, not at every batch
/// (which also saves a round trip per batch).
struct Conn {
    client: Client,
    statements: std::collections::HashMap<String, Statement>,
}

impl Conn {
    async fn prepared(&mut self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql).await?;
        if self.statements.len() >= MAX_STATEMENTS {
            self.statements.clear();
        }
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

/// What [`tls_with`] could not set up.
#[derive(Debug, thiserror::Error)]
#[error("PostgreSQL TLS: {0}")]
pub struct TlsError(String);

/// How much of the server's certificate is checked: libpq's `sslmode`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// `disable`, `prefer`, `require`: nothing, unless `PGSSLROOTCERT` names a
    /// CA file (then as [`Verify::Chain`], as libpq does with a root certificate).
    Nothing,
    /// `verify-ca`: the chain, up to the CA in `PGSSLROOTCERT` or else the
    /// system's CAs.
    Chain,
    /// `verify-full`: the chain and the host name.
    Full,
}

/// A database URL (or `key=value` string) parsed for tokio-postgres, with the
/// TLS connector it asks for. tokio-postgres knows `sslmode` `disable`,
/// `prefer` (the default) and `require`; libpq's `verify-ca` and
/// `verify-full` are accepted too and mean `require` with the certificate
/// checked (see [`Verify`]).
pub fn parse(url: &str) -> Result<(Config, MakeTlsConnector), PgError> {
    let mut verify = Verify::Nothing;
    let mut text = url.to_owned();
    for (mode, level) in [("verify-full", Verify::Full), ("verify-ca", Verify::Chain)] {
        let given = format!("sslmode={mode}");
        if text.contains(&given) {
            text = text.replace(&given, "sslmode=require");
            verify = level;
        }
    }
    let config = Config::from_str(&text).map_err(|e| PgError::Url { reason: describe(&e) })?;
    let root_cert = std::env::var_os("PGSSLROOTCERT").filter(|v| !v.is_empty()).map(std::path::PathBuf::from);
    Ok((config, tls_with(root_cert.as_deref(), verify)?))
}

/// The TLS connector of Strom's Postgres connections, as libpq would behave
/// without a client certificate. With `sslmode=prefer` (the default) a
/// connection is encrypted when the server offers TLS, with `sslmode=require`
/// it must be, and with `sslmode=disable` it is not. The server's
/// certificate is checked as `verify` says, against the CA file `root_cert`
/// (`PGSSLROOTCERT`, libpq's variable) or, for `verify-ca` and `verify-full`
/// without one, the system's CAs. Without either the connection is
/// encrypted without proof of whom it reaches, like libpq's `require`
/// without a root certificate.
pub fn tls_with(root_cert: Option<&std::path::Path>, verify: Verify) -> Result<MakeTlsConnector, TlsError> {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    let err = |what: &str, e: openssl::error::ErrorStack| TlsError(format!("{what}: {e}"));
    let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(|e| err("OpenSSL", e))?;
    let verify = match (root_cert, verify) {
        (Some(path), verify) => {
            // The CA file replaces the system's CAs (as libpq's sslrootcert does).
            let what = format!("reading the CA file {}", path.display());
            let pem = std::fs::read(path).map_err(|e| TlsError(format!("{what}: {e}")))?;
            let mut store = openssl::x509::store::X509StoreBuilder::new().map_err(|e| err("OpenSSL", e))?;
            for cert in openssl::x509::X509::stack_from_pem(&pem).map_err(|e| err(&what, e))? {
                store.add_cert(cert).map_err(|e| err(&what, e))?;
            }
            builder.set_cert_store(store.build());
            if verify == Verify::Full { Verify::Full } else { Verify::Chain }
        }
        (None, Verify::Nothing) => Verify::Nothing,
        (None, verify) => {
            builder.set_default_verify_paths().map_err(|e| err("reading the system's CAs", e))?;
            verify
        }
    };
    builder.set_verify(if verify == Verify::Nothing { SslVerifyMode::NONE } else { SslVerifyMode::PEER });
    let mut connector = MakeTlsConnector::new(builder.build());
    if verify != Verify::Full {
        connector.set_callback(|config, _| {
            config.set_verify_hostname(false);
            Ok(())
        });
    }
    Ok(connector)
}

impl Postgres {
    /// A handle on the database at `url` (`postgres://user[:password]@host[:port]/dbname?...`
    /// or `host=... dbname=...`). Nothing is connected yet: the first statement
    /// connects, and waits for the database if it is not there. Unless the URL
    /// says otherwise, connecting times out after 5 s (`connect_timeout`) and
    /// a connection whose sent data goes unacknowledged for 30 s is given up
    /// (`tcp_user_timeout`), so a cut network is retried like a stopped server.
    pub fn connect_lazy(url: &str) -> Result<Postgres, PgError> {
        let (mut config, tls) = parse(url)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        if config.get_tcp_user_timeout().is_none() {
            // A server that vanished without closing the connection (a cut
            // network) fails the statement after this, rather than after the
            // kernel's retransmissions (~15 min), and the statement is retried.
            config.tcp_user_timeout(Duration::from_secs(30));
        }
        if config.get_application_name().is_none() {
            config.application_name("strom");
        }
        Ok(Postgres {
            settings: Arc::new(Settings {
                config,
                tls,
                first_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(5),
                create_database: false,
                schema: None,
            }),
            pool: Arc::default(),
            metrics: PgMetrics::default(),
            schema_ready: Arc::default(),
        })
    }

    /// Creates the database named in the URL when it does not exist (by
    /// connecting to the `postgres` database on the same server), so that a
    /// fresh server is enough to start.
    pub fn create_database_if_missing(mut self) -> Postgres {
        Arc::make_mut(&mut self.settings).create_database = true;
        self
    }

    /// Creates the schema `sql` (as [`ensure_schema`](Self::ensure_schema)
    /// does) before the first insert of any sink on this handle or its
    /// clones, once. A service can then start at once, serve its health
    /// endpoint and wait for the database in its agents, where the stream
    /// backs up as it does for any outage, rather than before it starts.
    pub fn with_schema(mut self, sql: &str) -> Postgres {
        Arc::make_mut(&mut self.settings).schema = Some(Arc::from(sql));
        self
    }

    /// Creates the schema of [`with_schema`](Self::with_schema) unless it
    /// was already (waiting and retrying while the database is unreachable);
    /// every insert does this first. Spawn it at start to have the schema as
    /// soon as the database answers, without waiting for it.
    pub async fn schema_ready(&self) -> Result<(), PgError> {
        if let Some(sql) = &self.settings.schema {
            self.schema_ready.get_or_try_init(|| self.ensure_schema(sql)).await?;
        }
        Ok(())
    }

    /// Waits `first` after the first failure, doubling up to `max` (default
    /// 100 ms to 5 s).
    pub fn backoff(mut self, first: Duration, max: Duration) -> Postgres {
        let settings = Arc::make_mut(&mut self.settings);
        settings.first_backoff = first;
        settings.max_backoff = max.max(first);
        self
    }

    /// Registers the connector's metrics on the app's registry (once per
    /// app): `strom_postgres_rows_inserted_total`, `strom_postgres_insert_batches_total`,
    /// `strom_postgres_retries_total` and the histogram `strom_postgres_insert_seconds`,
    /// each by `table` (statements of [`ensure_schema`](Self::ensure_schema)
    /// count as table `(schema)`), and the gauge `strom_postgres_up`: 1 when
    /// the last statement reached the database, 0 when it could not.
    pub fn register_metrics(&self, metrics: &Metrics) {
        let m = &self.metrics;
        metrics.register(
            "postgres_rows_inserted",
            "Rows inserted into Postgres (conflicts skipped not counted)",
            m.rows.clone(),
        );
        metrics.register("postgres_insert_batches", "Batches committed to Postgres", m.batches.clone());
        metrics.register("postgres_retries", "Postgres statements tried again after a failure", m.retries.clone());
        metrics.register("postgres_insert_seconds", "Time of a successful Postgres insert attempt", m.seconds.clone());
        metrics.register("postgres_up", "Whether the last Postgres statement reached the database", m.up.clone());
    }

    /// Runs `sql` (one or more statements separated by `;`, e.g. `CREATE TABLE
    /// IF NOT EXISTS ...`), waiting and retrying while the database is
    /// unreachable. Fails at once on anything else, such as a syntax error.
    pub async fn ensure_schema(&self, sql: &str) -> Result<(), PgError> {
        let job = Job::Schema(sql);
        self.run("(schema)", "the schema statement", &job).await.map(|_| ())
    }

    /// Runs `job` until it succeeds or fails for a reason retrying cannot fix.
    async fn run(&self, label: &str, what: &str, job: &Job<'_>) -> Result<u64, PgError> {
        let mut delay = self.settings.first_backoff;
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let started = Instant::now();
            let outcome = match self.checkout().await {
                Ok(mut conn) => {
                    let outcome = job.run(&mut conn).await;
                    if outcome.is_err() {
                        // A statement may have gone stale (the table changed).
                        conn.statements.clear();
                    }
                    if outcome.as_ref().map_or_else(|e| !retryable(e), |_| true) {
                        self.checkin(conn);
                    }
                    outcome
                }
                Err(e) => Err(e),
            };
            match outcome {
                Ok(n) => {
                    self.metrics.up.set(1);
                    if attempt > 1 {
                        tracing::info!(table = label, attempts = attempt, "postgres: {what} succeeded after retrying");
                    }
                    if matches!(job, Job::Insert(_)) {
                        self.metrics
                            .seconds
                            .get_or_create(&TableLabel::new(label))
                            .observe(started.elapsed().as_secs_f64());
                    }
                    return Ok(n);
                }
                Err(e) if retryable(&e) => {
                    self.metrics.up.set(0);
                    self.metrics.retries.get_or_create(&TableLabel::new(label)).inc();
                    tracing::warn!(
                        table = label,
                        attempt,
                        retry_in_ms = delay.as_millis() as u64,
                        error = %describe(&e),
                        "postgres: {what} failed, retrying"
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.settings.max_backoff);
                }
                Err(e) => {
                    if e.as_db_error().is_some() {
                        self.metrics.up.set(1);
                    }
                    let reason = describe(&e);
                    tracing::error!(table = label, error = %reason, "postgres: {what} rejected");
                    return Err(PgError::Rejected { what: what.to_owned(), reason, source: e });
                }
            }
        }
    }

    /// An idle connection of the pool, or a new one.
    async fn checkout(&self) -> Result<Conn, tokio_postgres::Error> {
        loop {
            let idle = lock(&self.pool).pop();
            match idle {
                Some(conn) if conn.client.is_closed() => continue,
                Some(conn) => return Ok(conn),
                None => break,
            }
        }
        let client = match self.connect(&self.settings.config).await {
            Err(e) if self.settings.create_database && e.code() == Some(&SqlState::INVALID_CATALOG_NAME) => {
                self.create_database().await?;
                self.connect(&self.settings.config).await
            }
            other => other,
        }?;
        Ok(Conn { client, statements: Default::default() })
    }

    /// Returns a healthy connection to the pool.
    fn checkin(&self, conn: Conn) {
        let mut pool = lock(&self.pool);
        if !conn.client.is_closed() && pool.len() < MAX_IDLE {
            pool.push(conn);
        }
    }

    async fn connect(&self, config: &Config) -> Result<Client, tokio_postgres::Error> {
        let (client, connection) = config.connect(self.settings.tls.clone()).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %describe(&e), "postgres connection ended");
            }
        });
        Ok(client)
    }

    /// `CREATE DATABASE` for the URL's database, from the `postgres` database.
    async fn create_database(&self) -> Result<(), tokio_postgres::Error> {
        let config = &self.settings.config;
        let name = config.get_dbname().or(config.get_user()).unwrap_or("postgres").to_owned();
        let mut admin = config.clone();
        admin.dbname("postgres");
        let client = self.connect(&admin).await?;
        match client.batch_execute(&format!("CREATE DATABASE {}", quote_ident(&name))).await {
            Ok(()) => {
                tracing::info!(database = %name, "postgres: created the database");
                Ok(())
            }
            // Created by someone else meanwhile.
            Err(e) if e.code() == Some(&SqlState::DUPLICATE_DATABASE) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Writes rows into one table of a [`Postgres`] database (see the
/// [module documentation](self)). Cheap to clone.
///
/// ```no_run
/// # use stream_core::connect::postgres::{PgSink, Postgres};
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// let db = Postgres::connect_lazy("postgres://postgres@127.0.0.1:5432/strom")?;
/// let quakes = PgSink::new(&db, "quakes", &["unid", "lastupdate", "mag"]).on_conflict(
///     "(unid) DO UPDATE SET lastupdate = EXCLUDED.lastupdate, mag = EXCLUDED.mag
///      WHERE quakes.lastupdate < EXCLUDED.lastupdate",
/// );
/// let written = quakes.insert([("20261123_0000001", 1_700_000_000_i64, 4.2_f64)]).await?;
/// assert!(written <= 1); // 0 when the stored row was newer
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct PgSink {
    db: Postgres,
    table: Arc<str>,
    /// `INSERT INTO t (a, b) VALUES`.
    head: Arc<str>,
    /// ` ON CONFLICT ...`, or empty.
    tail: Arc<str>,
    columns: usize,
    max_rows: usize,
    rows: Counter,
    batches: Counter,
}

/// Postgres takes at most this many parameters in one statement.
const MAX_PARAMS: usize = u16::MAX as usize;

impl PgSink {
    /// A sink into `table` (optionally `schema.table`) that fills `columns`,
    /// in this order, from each row's values. Names that are plain lower-case
    /// identifiers are used as they are; others are quoted.
    pub fn new(db: &Postgres, table: &str, columns: &[&str]) -> PgSink {
        let cols: Vec<String> = columns.iter().map(|c| ident(c)).collect();
        let target = table.split('.').map(ident).collect::<Vec<_>>().join(".");
        let label = TableLabel::new(table);
        PgSink {
            db: db.clone(),
            table: table.into(),
            head: format!("INSERT INTO {target} ({}) VALUES ", cols.join(", ")).into(),
            tail: "".into(),
            columns: columns.len(),
            max_rows: 1000,
            rows: db.metrics.rows.get_or_create(&label).clone(),
            batches: db.metrics.batches.get_or_create(&label).clone(),
        }
    }

    /// Skips rows whose unique key is already in the table (`ON CONFLICT DO
    /// NOTHING`), which makes replays harmless.
    pub fn on_conflict_do_nothing(self) -> PgSink {
        self.on_conflict("DO NOTHING")
    }

    /// Appends `ON CONFLICT <clause>` to the insert, e.g. `(id) DO UPDATE SET
    /// v = EXCLUDED.v`. (An update must not meet one key twice in a batch:
    /// Postgres rejects that.)
    pub fn on_conflict(mut self, clause: &str) -> PgSink {
        self.tail = format!(" ON CONFLICT {clause}").into();
        self
    }

    /// At most `n` rows per `INSERT` statement (default 1,000, and never more
    /// than Postgres's 65,535 parameters); a larger batch is written in one
    /// transaction of several statements.
    pub fn max_rows_per_statement(mut self, n: usize) -> PgSink {
        self.max_rows = n.max(1);
        self
    }

    /// The table's name, as given.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Inserts `rows` and resolves once they are committed, with the number
    /// of rows written (rows skipped by an `ON CONFLICT` clause not counted).
    /// Waits and retries while the database is unreachable; fails with
    /// [`PgError::Rejected`] when the database refuses the rows.
    pub fn insert<'a, R: ToRow + 'a>(
        &'a self,
        rows: impl IntoIterator<Item = R>,
    ) -> impl Future<Output = Result<u64, PgError>> + Send + 'a {
        // Collected before the future, so the future holds only the rows.
        let rows: Vec<R> = rows.into_iter().collect();
        async move {
            if rows.is_empty() {
                return Ok(0);
            }
            self.db.schema_ready().await?;
            let mut statements = Vec::new();
            let per_statement = self.max_rows.min(MAX_PARAMS / self.columns.max(1)).max(1);
            for (index, chunk) in rows.chunks(per_statement).enumerate() {
                let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(chunk.len() * self.columns);
                for (i, row) in chunk.iter().enumerate() {
                    let before = params.len();
                    row.values(&mut params);
                    let got = params.len() - before;
                    if got != self.columns {
                        return Err(PgError::RowWidth {
                            table: self.table.to_string(),
                            row: index * per_statement + i,
                            got,
                            expected: self.columns,
                        });
                    }
                }
                statements.push((self.sql(chunk.len()), params));
            }
            let what = format!("the insert into {}", self.table);
            let written = self.db.run(&self.table, &what, &Job::Insert(statements)).await?;
            self.rows.inc_by(written);
            self.batches.inc();
            Ok(written)
        }
    }

    /// The statement for `n` rows.
    fn sql(&self, n: usize) -> String {
        let mut sql = String::with_capacity(self.head.len() + self.tail.len() + n * self.columns * 6);
        sql.push_str(&self.head);
        let mut p = 0;
        for r in 0..n {
            sql.push_str(if r == 0 { "(" } else { ", (" });
            for c in 0..self.columns {
                p += 1;
                if c > 0 {
                    sql.push_str(", ");
                }
                sql.push('$');
                sql.push_str(&p.to_string());
            }
            sql.push(')');
        }
        sql.push_str(&self.tail);
        sql
    }
}

/// One row of values for a [`PgSink`], in the order of its columns.
/// Implemented for tuples of up to 12 [`ToSql`] values and for [`DynRow`].
pub trait ToRow: Send + Sync {
    /// Appends the row's values to `out`.
    fn values<'a>(&'a self, out: &mut Vec<&'a (dyn ToSql + Sync)>);
}

/// A row whose values are only known at run time.
///
/// ```
/// use stream_core::connect::postgres::{DynRow, ToSql};
/// let row: DynRow = vec![Box::new(7_i32), Box::new("seven".to_owned())];
/// # let _ = row;
/// ```
pub type DynRow = Vec<Box<dyn ToSql + Send + Sync>>;

impl ToRow for DynRow {
    fn values<'a>(&'a self, out: &mut Vec<&'a (dyn ToSql + Sync)>) {
        out.extend(self.iter().map(|v| &**v as &(dyn ToSql + Sync)));
    }
}

macro_rules! tuple_rows {
    ($($name:ident)+) => {
        impl<$($name: ToSql + Send + Sync),+> ToRow for ($($name,)+) {
            #[allow(non_snake_case)]
            fn values<'a>(&'a self, out: &mut Vec<&'a (dyn ToSql + Sync)>) {
                let ($($name,)+) = self;
                $(out.push($name);)+
            }
        }
    };
}

tuple_rows!(A);
tuple_rows!(A B);
tuple_rows!(A B C);
tuple_rows!(A B C D);
tuple_rows!(A B C D E);
tuple_rows!(A B C D E F);
tuple_rows!(A B C D E F G);
tuple_rows!(A B C D E F G H);
tuple_rows!(A B C D E F G H I);
tuple_rows!(A B C D E F G H I J);
tuple_rows!(A B C D E F G H I J K);
tuple_rows!(A B C D E F G H I J K L);

/// What one attempt does.
enum Job<'a> {
    /// `batch_execute` of the text.
    Schema(&'a str),
    /// Statements with their parameters; several are run in one transaction.
    Insert(Vec<(String, Vec<&'a (dyn ToSql + Sync)>)>),
}

impl Job<'_> {
    async fn run(&self, conn: &mut Conn) -> Result<u64, tokio_postgres::Error> {
        match self {
            Job::Schema(sql) => conn.client.batch_execute(sql).await.map(|()| 0),
            Job::Insert(statements) => {
                let mut prepared = Vec::with_capacity(statements.len());
                for (sql, _) in statements {
                    prepared.push(conn.prepared(sql).await?);
                }
                if let ([statement], [(_, params)]) = (prepared.as_slice(), statements.as_slice()) {
                    return conn.client.execute(statement, params).await;
                }
                let tx = conn.client.transaction().await?;
                let mut written = 0;
                for (statement, (_, params)) in prepared.iter().zip(statements) {
                    written += tx.execute(statement, params).await?;
                }
                tx.commit().await?;
                Ok(written)
            }
        }
    }
}

/// Whether `e` may go away by itself: the connection failed or was lost, the
/// server is starting, stopping or out of resources, or a transaction lost a
/// race. Everything else the server says is an answer that would be repeated.
fn retryable(e: &tokio_postgres::Error) -> bool {
    if let Some(code) = e.code() {
        let code = code.code();
        return code.starts_with("08") // connection exception
            || code.starts_with("53") // insufficient resources (too many connections, disk full)
            || code.starts_with("57P") // admin or crash shutdown, cannot connect now
            || code.starts_with("58") // system error (I/O)
            || code == "40001" // serialization failure
            || code == "40P01" // deadlock
            || code == "55P03"; // lock not available
    }
    if e.is_closed() {
        return true;
    }
    let mut source = e.source();
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    // The connect timeout, which carries no source.
    e.to_string().starts_with("timeout")
}

/// The error and its causes on one line; the server's errors with their SQLSTATE.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{}: {} (SQLSTATE {})", db.severity(), db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            s.push_str("; ");
            s.push_str(detail);
        }
        return s;
    }
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// `name` as it is when it is a plain lower-case identifier, else quoted.
fn ident(name: &str) -> String {
    let plain = name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain { name.to_owned() } else { quote_ident(name) }
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabel {
    table: String,
}

impl TableLabel {
    fn new(table: &str) -> TableLabel {
        TableLabel { table: table.to_owned() }
    }
}

fn insert_histogram() -> Histogram {
    // 0.5 ms to about 16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

#[derive(Clone)]
struct PgMetrics {
    rows: Family<TableLabel, Counter>,
    batches: Family<TableLabel, Counter>,
    retries: Family<TableLabel, Counter>,
    seconds: Family<TableLabel, Histogram>,
    up: Gauge,
}

impl Default for PgMetrics {
    fn default() -> PgMetrics {
        PgMetrics {
            rows: Family::default(),
            batches: Family::default(),
            retries: Family::default(),
            seconds: Family::new_with_constructor(insert_histogram),
            up: Gauge::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first column of every row of a simple query (which prepares nothing).
    async fn simple_column(client: &Client, sql: &str) -> Result<Vec<String>, Box<dyn std::error::Error>> {
        let messages = client.simple_query(sql).await?;
        Ok(messages
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                _ => None,
            })
            .collect())
    }

    /// The first column of the first row of a simple query.
    async fn simple_value(client: &Client, sql: &str) -> Result<String, Box<dyn std::error::Error>> {
        simple_column(client, sql).await?.into_iter().next().ok_or_else(|| format!("{sql}: no row").into())
    }

    /// The statements the server holds prepared for the pool's one connection.
    async fn prepared(db: &Postgres) -> Result<Vec<String>, Box<dyn std::error::Error>> {
        let conn = db.checkout().await?;
        assert!(lock(&db.pool).is_empty(), "one connection");
        let names = simple_column(&conn.client, "SELECT name FROM pg_prepared_statements ORDER BY name").await?;
        db.checkin(conn);
        Ok(names)
    }

    /// Whether the pool's one connection is encrypted, by the server's account.
    async fn encrypted(db: &Postgres) -> Result<bool, Box<dyn std::error::Error>> {
        let conn = db.checkout().await?;
        let ssl = simple_value(&conn.client, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").await?;
        db.checkin(conn);
        Ok(ssl == "t")
    }

    /// A self-signed CA certificate that signed nothing, in a PEM file.
    fn unrelated_ca(dir: &std::path::Path) -> Result<std::path::PathBuf, Box<dyn std::error::Error>> {
        use openssl::{asn1::Asn1Time, hash::MessageDigest, pkey::PKey, rsa::Rsa, x509};
        let key = PKey::from_rsa(Rsa::generate(2048)?)?;
        let mut name = x509::X509NameBuilder::new()?;
        name.append_entry_by_text("CN", "nobody's CA")?;
        let name = name.build();
        let mut cert = x509::X509Builder::new()?;
        cert.set_version(2)?;
        cert.set_subject_name(&name)?;
        cert.set_issuer_name(&name)?;
        cert.set_pubkey(&key)?;
        cert.set_not_before(&*Asn1Time::days_from_now(0)?)?;
        cert.set_not_after(&*Asn1Time::days_from_now(1)?)?;
        cert.sign(&key, MessageDigest::sha256())?;
        let path = dir.join("ca.pem");
        std::fs::write(&path, cert.build().to_pem()?)?;
        Ok(path)
    }

    #[tokio::test]
    async fn connections_use_tls_as_libpq_would() -> Result<(), Box<dyn std::error::Error>> {
        let test_db = crate::testing::TestDatabase::create("tls").await?;
        let server_tls = simple_value(&test_db.connect().await?, "SHOW ssl").await? == "on";
        for (mode, expected) in [("prefer", server_tls), ("require", true), ("disable", false)] {
            let db = Postgres::connect_lazy(&format!("{}?sslmode={mode}", test_db.url()))?;
            if mode == "require" && !server_tls {
                let refused = db.checkout().await.err().map(|e| describe(&e)).unwrap_or_default();
                assert!(refused.contains("TLS"), "sslmode=require against a server without TLS: {refused}");
                continue;
            }
            assert_eq!(encrypted(&db).await?, expected, "sslmode={mode}, server TLS {server_tls}");
        }
        if server_tls {
            // With a CA to check against, a certificate it did not sign is refused.
            let dir = tempfile::tempdir()?;
            let tls = tls_with(Some(&unrelated_ca(dir.path())?), Verify::Nothing)?;
            let config = Config::from_str(&format!("{}?sslmode=require", test_db.url()))?;
            let refused = config.connect(tls).await.err().map(|e| describe(&e)).unwrap_or_default();
            assert!(refused.contains("certificate verify failed"), "{refused}");
            // The server's own (self-signed) certificate as the CA: its chain
            // holds (verify-ca), its host name is not 127.0.0.1 (verify-full).
            let own = simple_value(&test_db.connect().await?, "SHOW ssl_cert_file").await?;
            let own = std::path::Path::new(&own);
            let config = Config::from_str(&format!("{}?sslmode=require", test_db.url()))?;
            let (client, connection) = config.connect(tls_with(Some(own), Verify::Chain)?).await?;
            drop((client, connection));
            let refused = config.connect(tls_with(Some(own), Verify::Full)?).await.err().map(|e| describe(&e));
            assert!(refused.unwrap_or_default().contains("certificate verify failed"));
            // libpq's sslmode=verify-full in a URL, without a CA file: the
            // system's CAs, which did not sign this server's certificate (or,
            // as Debian's store holds its snakeoil certificate, the host name
            // 127.0.0.1 is not the certificate's).
            let (config, tls) = parse(&format!("{}?sslmode=verify-full", test_db.url()))?;
            assert_eq!(config.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
            if std::env::var_os("PGSSLROOTCERT").is_none() {
                let refused = config.connect(tls).await.err().map(|e| describe(&e)).unwrap_or_default();
                assert!(refused.contains("certificate verify failed"), "{refused}");
            }
        }
        let missing =
            tls_with(Some(std::path::Path::new("/nonexistent/ca.pem")), Verify::Nothing).err().map(|e| e.to_string());
        assert!(missing.unwrap_or_default().contains("reading the CA file /nonexistent/ca.pem"));
        Ok(())
    }

    #[tokio::test]
    async fn an_insert_is_prepared_once_per_connection_and_number_of_rows() -> Result<(), Box<dyn std::error::Error>> {
        let test_db = crate::testing::TestDatabase::create("prepared").await?;
        let db = Postgres::connect_lazy(&test_db.url())?;
        db.ensure_schema("CREATE TABLE t (k integer PRIMARY KEY, v text NOT NULL)").await?;
        let sink = PgSink::new(&db, "t", &["k", "v"]).on_conflict_do_nothing();
        sink.insert([(1, "a"), (2, "b")]).await?;
        let first = prepared(&db).await?;
        assert_eq!(first.len(), 1, "{first:?}");
        sink.insert([(3, "c"), (4, "d")]).await?;
        assert_eq!(prepared(&db).await?, first, "the same statement again, not prepared anew");
        sink.insert([(5, "e")]).await?;
        assert_eq!(prepared(&db).await?.len(), 2, "another number of rows, another statement");
        // The table changes under the prepared statements: inserts go on.
        db.ensure_schema("ALTER TABLE t ADD COLUMN note text").await?;
        assert_eq!(sink.insert([(6, "f"), (7, "g")]).await?, 2);
        assert_eq!(sink.insert([(7, "g"), (8, "h")]).await?, 1, "a replayed row is skipped");
        let client = test_db.connect().await?;
        let n: i64 = client.query_one("SELECT count(*) FROM t", &[]).await?.get(0);
        assert_eq!(n, 8);
        Ok(())
    }

    #[test]
    fn statements_number_parameters_row_by_row() {
        let Ok(db) = Postgres::connect_lazy("postgres://u@localhost/db") else { panic!("a valid URL") };
        let sink = PgSink::new(&db, "public.Temps", &["sensor_num", "ts"]).on_conflict_do_nothing();
        assert_eq!(
            sink.sql(2),
            "INSERT INTO public.\"Temps\" (sensor_num, ts) VALUES ($1, $2), ($3, $4) ON CONFLICT DO NOTHING"
        );
    }

    #[test]
    fn a_bad_url_is_an_error_that_does_not_repeat_it() {
        let Err(e) = Postgres::connect_lazy("postgres://u:secret@host:notaport/db") else { panic!("an invalid URL") };
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn identifiers_are_quoted_unless_plain() {
        assert_eq!(ident("value"), "value");
        assert_eq!(ident("Value"), "\"Value\"");
        assert_eq!(ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(ident("1st"), "\"1st\"");
    }
}
