//! What api-gateway serves: the seed's REST API over the tables db-loader
//! writes ([`crate::loader::SCHEMA`]), with its OpenAPI document and
//! Swagger UI, on the worker's HTTP port beside `/metrics`, `/health` and `/ready`.
//!
//! - `GET /temperature?sensor_num=&timestamp_start=&timestamp_end=` and
//!   `GET /average?...`: a JSON list of `{"timestamp": 1700000000.123,
//!   "sensor_num": 1, "value": 21.0}` (epoch seconds), newest first, with
//!   `timestamp_start <= timestamp <= timestamp_end`;
//! - `GET /temperature_latest?sensor_num=`: a list of at most one, empty for
//!   a sensor never seen;
//! - `GET /openapi.json`, and `GET /docs` (Swagger UI, served from this
//!   binary: no CDN).
//!
//! A missing or malformed parameter is a 422 with a JSON body shaped like
//! FastAPI's (`{"detail": [{"loc": ["query", "sensor_num"], "msg": ..., "type": ...}]}`);
//! a database that cannot be reached is a 503 `{"detail": "..."}`.
//!
//! Metrics: `strom_api_requests_total{endpoint,status}` and
//! `strom_api_latest_value_age_seconds`, the age of the value
//! `/temperature_latest` served last.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use serde_json::json;
use stream_core::connect::postgres::ToSql;
use stream_core::connect::postgres::tokio_postgres::error::SqlState;
use stream_core::connect::postgres::tokio_postgres::{self, Client, Config};
use stream_core::metrics::prometheus_client::metrics::counter::Counter;
use stream_core::metrics::prometheus_client::metrics::family::Family;
use stream_core::metrics::prometheus_client::metrics::gauge::Gauge;
use stream_core::{App, BoxError};

use crate::embedded::{Embedded, Point};

/// The OpenAPI 3 document of the API.
pub const OPENAPI: &str = include_str!("../assets/openapi.json");
const DOCS_HTML: &str = include_str!("../assets/docs.html");
const SWAGGER_JS: &[u8] = include_bytes!("../assets/swagger-ui/swagger-ui-bundle.js");
const SWAGGER_CSS: &[u8] = include_bytes!("../assets/swagger-ui/swagger-ui.css");

/// One value as the API answers it.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Value {
    /// When the sensor measured it, epoch seconds.
    pub timestamp: f64,
    /// The sensor number.
    pub sensor_num: u32,
    /// Degrees Celsius.
    pub value: f64,
}

/// Where the API reads the rows db-loader wrote.
#[derive(Clone, Copy, Debug)]
pub enum Source<'a> {
    /// Postgres at a `DATABASE_URL`.
    Postgres(&'a str),
    /// The embedded database of the one-process demo.
    Embedded(&'a Embedded),
}

/// The API's routes, reading `source`, its metrics registered on `app`.
/// Serve them with `app.routes(...)`.
pub fn router(app: &App, source: Source<'_>) -> Result<Router, BoxError> {
    let metrics = ApiMetrics::register(app);
    let db = match source {
        Source::Postgres(url) => Db::Postgres(Box::new(PgReader::new(url)?)),
        Source::Embedded(embedded) => Db::Embedded(embedded.clone()),
    };
    let state = Arc::new(Api { db, metrics });
    Ok(Router::new()
        .route("/temperature", get(temperature))
        .route("/average", get(average))
        .route("/temperature_latest", get(temperature_latest))
        .route("/openapi.json", get(openapi))
        .route("/docs", get(docs))
        .route("/docs/swagger-ui-bundle.js", get(|| async { asset("text/javascript; charset=utf-8", SWAGGER_JS) }))
        .route("/docs/swagger-ui.css", get(|| async { asset("text/css; charset=utf-8", SWAGGER_CSS) }))
        .with_state(state))
}

struct Api {
    db: Db,
    metrics: ApiMetrics,
}

type Shared = State<Arc<Api>>;

async fn temperature(State(api): Shared, uri: Uri) -> Response {
    let answer = range(&api, "temperature", &uri).await;
    api.respond("/temperature", answer)
}

async fn average(State(api): Shared, uri: Uri) -> Response {
    let answer = range(&api, "average", &uri).await;
    api.respond("/average", answer)
}

async fn temperature_latest(State(api): Shared, uri: Uri) -> Response {
    let answer = latest(&api, &uri).await;
    if let Ok(values) = &answer
        && let Some(v) = values.first()
    {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        api.metrics.latest_age.set(now - v.timestamp);
    }
    api.respond("/temperature_latest", answer)
}

async fn openapi(State(api): Shared) -> Response {
    api.metrics.count("/openapi.json", StatusCode::OK);
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn docs(State(api): Shared) -> Response {
    api.metrics.count("/docs", StatusCode::OK);
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], DOCS_HTML).into_response()
}

fn asset(content_type: &'static str, body: &'static [u8]) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "public, max-age=86400")], body).into_response()
}

/// `/temperature` and `/average`: a sensor's rows between two times, newest first.
async fn range(api: &Api, table: &str, uri: &Uri) -> Result<Vec<Value>, Failure> {
    let params = Params::parse(uri)?;
    let mut problems = Vec::new();
    let sensor = params.sensor_num(&mut problems);
    let start = params.seconds("timestamp_start", &mut problems);
    let end = params.seconds("timestamp_end", &mut problems);
    let (Some(sensor), Some(start), Some(end)) = (sensor, start, end) else {
        return Err(Failure::Invalid(problems));
    };
    if start > end {
        return Err(Failure::Invalid(vec![Problem::new(
            "timestamp_end",
            "timestamp_end must not be before timestamp_start",
            "value_error",
        )]));
    }
    // Inclusive bounds in whole milliseconds: the first at or after start, the last at or before end.
    let (from_ms, to_ms) = (start.div_euclid(1000) + i64::from(start.rem_euclid(1000) != 0), end.div_euclid(1000));
    match &api.db {
        Db::Postgres(db) => {
            let sql = format!(
                "SELECT timestamp_ms, value FROM {table}
                 WHERE sensor_num = $1 AND timestamp_ms BETWEEN $2 AND $3 ORDER BY timestamp_ms DESC"
            );
            db.values(&sql, &[&i64::from(sensor), &from_ms, &to_ms], sensor).await
        }
        Db::Embedded(db) => embedded(db.range(table, sensor, from_ms, to_ms), sensor),
    }
}

/// `/temperature_latest`: a sensor's newest reading, if any.
async fn latest(api: &Api, uri: &Uri) -> Result<Vec<Value>, Failure> {
    let params = Params::parse(uri)?;
    let mut problems = Vec::new();
    let Some(sensor) = params.sensor_num(&mut problems) else {
        return Err(Failure::Invalid(problems));
    };
    match &api.db {
        Db::Postgres(db) => {
            let sql =
                "SELECT timestamp_ms, value FROM temperature WHERE sensor_num = $1 ORDER BY timestamp_ms DESC LIMIT 1";
            db.values(sql, &[&i64::from(sensor)], sensor).await
        }
        Db::Embedded(db) => embedded(db.latest("temperature", sensor).map(Vec::from_iter), sensor),
    }
}

/// The embedded database's answer as the API's.
fn embedded(points: Result<Vec<Point>, sled::Error>, sensor_num: u32) -> Result<Vec<Value>, Failure> {
    let points = points.map_err(|e| Failure::Unavailable(e.to_string()))?;
    Ok(points.into_iter().map(|(ms, value)| Value { timestamp: ms as f64 / 1000.0, sensor_num, value }).collect())
}

impl Api {
    fn respond(&self, endpoint: &str, answer: Result<Vec<Value>, Failure>) -> Response {
        let response = match answer {
            // Serialized as they are, so each object's fields keep their order.
            Ok(values) => axum::Json(values).into_response(),
            Err(Failure::Invalid(problems)) => {
                (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(json!({ "detail": problems }))).into_response()
            }
            Err(Failure::Unavailable(reason)) => {
                tracing::warn!(endpoint, error = %reason, "the database is unavailable");
                let body = json!({ "detail": "the database is unavailable" });
                (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
            }
        };
        self.metrics.count(endpoint, response.status());
        response
    }
}

/// Why a request got no values.
#[derive(Debug)]
enum Failure {
    /// Missing or malformed parameters: 422.
    Invalid(Vec<Problem>),
    /// The database could not answer: 503.
    Unavailable(String),
}

/// One thing wrong with a request, as FastAPI reports it.
#[derive(Serialize, Debug)]
struct Problem {
    loc: [&'static str; 2],
    msg: String,
    #[serde(rename = "type")]
    kind: &'static str,
}

impl Problem {
    fn new(param: &'static str, msg: impl Into<String>, kind: &'static str) -> Problem {
        Problem { loc: ["query", param], msg: msg.into(), kind }
    }
}

/// A request's query parameters.
struct Params(HashMap<String, String>);

impl Params {
    fn parse(uri: &Uri) -> Result<Params, Failure> {
        match Query::<HashMap<String, String>>::try_from_uri(uri) {
            Ok(Query(map)) => Ok(Params(map)),
            Err(e) => Err(Failure::Invalid(vec![Problem {
                loc: ["query", ""],
                msg: format!("malformed query string: {}", e.body_text()),
                kind: "value_error",
            }])),
        }
    }

    fn get(&self, name: &'static str, problems: &mut Vec<Problem>) -> Option<&str> {
        let value = self.0.get(name).map(|v| v.trim());
        if value.is_none_or(str::is_empty) {
            problems.push(Problem::new(name, "field required", "missing"));
            return None;
        }
        value
    }

    fn sensor_num(&self, problems: &mut Vec<Problem>) -> Option<u32> {
        let text = self.get("sensor_num", problems)?;
        let parsed = u32::from_str(text).ok();
        if parsed.is_none() {
            problems.push(Problem::new(
                "sensor_num",
                "value is not a valid sensor number (0 to 4294967295)",
                "int_parsing",
            ));
        }
        parsed
    }

    /// Epoch seconds (an integer or a decimal), as whole microseconds.
    fn seconds(&self, name: &'static str, problems: &mut Vec<Problem>) -> Option<i64> {
        let text = self.get(name, problems)?;
        let parsed = f64::from_str(text)
            .ok()
            .filter(|s| s.is_finite() && s.abs() < 1e11 && !text.contains(|c: char| c.is_ascii_alphabetic()));
        if parsed.is_none() {
            problems.push(Problem::new(name, "value is not a valid timestamp (epoch seconds)", "float_parsing"));
        }
        // To the microsecond, rounded: exact for inputs of up to 6 decimals.
        parsed.map(|s| (s * 1e6).round() as i64)
    }
}

/// The API's metrics.
#[derive(Clone)]
struct ApiMetrics {
    requests: Family<Vec<(String, String)>, Counter>,
    latest_age: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl ApiMetrics {
    fn register(app: &App) -> ApiMetrics {
        let m = app.metrics();
        ApiMetrics {
            requests: m.register_once("api_requests", "REST requests, by endpoint and status", Family::default),
            latest_age: m.register_once(
                "api_latest_value_age_seconds",
                "Age of the value /temperature_latest served last",
                Gauge::default,
            ),
        }
    }

    fn count(&self, endpoint: &str, status: StatusCode) {
        let labels =
            vec![("endpoint".to_owned(), endpoint.to_owned()), ("status".to_owned(), status.as_u16().to_string())];
        self.requests.get_or_create(&labels).inc();
    }
}

/// How long a request may wait for the database before it is a 503.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The rows the API reads.
enum Db {
    Postgres(Box<PgReader>),
    Embedded(Embedded),
}

/// One connection to the database, opened on first use and again after it
/// was lost. Queries share it (tokio-postgres pipelines them).
struct PgReader {
    config: Config,
    tls: stream_core::connect::postgres::MakeTlsConnector,
    client: tokio::sync::Mutex<Option<Arc<Client>>>,
}

impl PgReader {
    fn new(url: &str) -> Result<PgReader, BoxError> {
        // TLS as the loader's connections use it (`sslmode`, `PGSSLROOTCERT`).
        let (mut config, tls) = stream_core::connect::postgres::parse(url)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(3));
        }
        config.tcp_user_timeout(Duration::from_secs(10));
        if config.get_application_name().is_none() {
            config.application_name("strom-api-gateway");
        }
        Ok(PgReader { config, tls, client: tokio::sync::Mutex::new(None) })
    }

    async fn client(&self) -> Result<Arc<Client>, tokio_postgres::Error> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        let (client, connection) = self.config.connect(self.tls.clone()).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "api-gateway: the database connection ended");
            }
        });
        let client = Arc::new(client);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Runs `sql`, whose rows are `(timestamp_ms bigint, value double precision)`,
    /// once more on a new connection if the connection was lost.
    async fn values(&self, sql: &str, params: &[&(dyn ToSql + Sync)], sensor_num: u32) -> Result<Vec<Value>, Failure> {
        let query = async {
            let mut retried = false;
            loop {
                let client = self.client().await?;
                match client.query(sql, params).await {
                    Err(_) if client.is_closed() && !retried => retried = true,
                    other => return other,
                }
            }
        };
        let rows = match tokio::time::timeout(QUERY_TIMEOUT, query).await {
            Ok(Ok(rows)) => rows,
            // No table yet: db-loader has not started; nothing was loaded.
            Ok(Err(e)) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => Vec::new(),
            Ok(Err(e)) => return Err(Failure::Unavailable(describe(&e))),
            Err(_) => return Err(Failure::Unavailable(format!("no answer within {QUERY_TIMEOUT:?}"))),
        };
        rows.iter()
            .map(|row| {
                let ms: i64 = row.try_get(0).map_err(|e| Failure::Unavailable(e.to_string()))?;
                let value: f64 = row.try_get(1).map_err(|e| Failure::Unavailable(e.to_string()))?;
                Ok(Value { timestamp: ms as f64 / 1000.0, sensor_num, value })
            })
            .collect()
    }
}

/// The server's message for a database error, else the client's error and its cause.
fn describe(e: &tokio_postgres::Error) -> String {
    match (e.as_db_error(), std::error::Error::source(e)) {
        (Some(db), _) => format!("{}: {} (SQLSTATE {})", db.severity(), db.message(), db.code().code()),
        (None, Some(cause)) => format!("{e}: {cause}"),
        (None, None) => e.to_string(),
    }
}
