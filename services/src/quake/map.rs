//! What quake-map serves: every event of `quakes.raw` at its newest version,
//! as a live map page, a GeoJSON API and a stream of server-sent events.
//!
//! Each replica reads `quakes.raw` whole as a global table
//! ([`App::global_table_from`]): no consumer group, every partition, each
//! `unid` at the version with the latest `lastupdate` (a stale update that
//! arrives late is not kept). So any number of replicas run side by side,
//! each serving the same data, and a replica that starts reads the topic to
//! its end before it answers. The table's changes feed an in-memory index
//! ordered by event time, which the API reads, and the event stream.
//!
//! - `GET /`: the map page ([`crate::quake::page`]).
//! - `GET /api/quakes`: a GeoJSON FeatureCollection, newest event `time`
//!   first, each feature's `id` its `unid`; `since` (RFC 3339: events at or
//!   after it), `min_mag`, `limit` (default [`DEFAULT_LIMIT`], at most
//!   [`MAX_LIMIT`]). A bad parameter is a 422 `{"error": "..."}`.
//! - `GET /api/quakes/stream`: server-sent events, one `data:` line per
//!   create or update (the feature as JSON), a comment when the client
//!   connects and a keepalive comment every 15 s.
//!   Each client may fall [`STREAM_BUFFER`] events behind; a client slower
//!   than that has its stream ended (it reconnects and reloads), never
//!   buffered without limit. A client that stops reading altogether holds
//!   no more than that (the events are shared, not copied per client) and
//!   what its socket buffers hold; its stream ends when it reads again.
//!
//! Metrics: `strom_quake_map_events` (events held),
//! `strom_quake_sse_clients`, `strom_quake_sse_dropped_total` (slow clients
//! disconnected), `strom_quake_newest_event_age_seconds` and
//! `strom_quake_map_requests_total{route}`.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use stream_core::metrics::prometheus_client::metrics::counter::Counter;
use stream_core::metrics::prometheus_client::metrics::family::Family;
use stream_core::metrics::prometheus_client::metrics::gauge::Gauge;
use stream_core::{App, Change, GlobalTable, Topic};
use tokio::sync::broadcast;

use super::page::{self, PageSettings};
use super::records::Quake;

/// `/api/quakes`'s `limit` when none is given.
pub const DEFAULT_LIMIT: usize = 500;
/// The largest `limit`.
pub const MAX_LIMIT: usize = 5000;
/// How many events a stream client may fall behind before it is disconnected.
pub const STREAM_BUFFER: usize = 256;
/// How often an idle event stream sends a keepalive comment.
pub const KEEPALIVE: Duration = Duration::from_secs(15);

/// The events a replica holds, newest first, and who follows them.
#[derive(Clone)]
pub struct QuakeMap {
    index: Arc<RwLock<Index>>,
    live: broadcast::Sender<Arc<str>>,
    metrics: MapMetrics,
    /// Recent `/api/quakes` answers, by query, with the index version they
    /// were made from: clients asking the same while nothing changed share
    /// one body instead of each joining thousands of features.
    answers: Arc<std::sync::Mutex<HashMap<QueryKey, (u64, Bytes)>>>,
}

/// A query as a cache key (`since` in ms, `min_mag` as bits).
type QueryKey = (Option<i64>, Option<u64>, usize);
/// How many distinct queries' answers are kept.
const ANSWERS_KEPT: usize = 32;

impl std::fmt::Debug for QuakeMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuakeMap").field("events", &self.len()).finish_non_exhaustive()
    }
}

/// One event as served: the quake and its feature, serialised once.
struct Held {
    quake: Quake,
    feature: Arc<str>,
}

#[derive(Default)]
struct Index {
    by_unid: HashMap<String, Held>,
    /// (newest time first, unid): the API's order.
    by_time: BTreeSet<(Reverse<DateTime<Utc>>, String)>,
    /// Changes with every change of the index.
    version: u64,
}

impl Index {
    /// Holds `quake` unless a newer version is held; returns its feature if it changed anything.
    fn offer(&mut self, quake: Quake) -> Option<Arc<str>> {
        if let Some(held) = self.by_unid.get(&quake.unid) {
            if !quake.supersedes(&held.quake) {
                return None;
            }
            self.by_time.remove(&(Reverse(held.quake.time), quake.unid.clone()));
        }
        let feature: Arc<str> = Arc::from(quake.feature().to_string());
        self.version += 1;
        self.by_time.insert((Reverse(quake.time), quake.unid.clone()));
        self.by_unid.insert(quake.unid.clone(), Held { quake, feature: feature.clone() });
        Some(feature)
    }

    fn remove(&mut self, unid: &str) {
        if let Some(held) = self.by_unid.remove(unid) {
            self.by_time.remove(&(Reverse(held.quake.time), unid.to_owned()));
            self.version += 1;
        }
    }

    fn newest(&self) -> Option<DateTime<Utc>> {
        self.by_time.first().map(|(Reverse(t), _)| *t)
    }
}

/// quake-map's metrics.
#[derive(Clone, Debug)]
struct MapMetrics {
    events: Gauge,
    clients: Gauge,
    dropped: Counter,
    newest_age: Gauge<f64, AtomicU64>,
    requests: Family<Vec<(String, String)>, Counter>,
}

impl MapMetrics {
    fn register(app: &App) -> MapMetrics {
        let m = app.metrics();
        MapMetrics {
            events: m.register_once("quake_map_events", "Events this replica holds", Gauge::<i64, AtomicI64>::default),
            clients: m.register_once(
                "quake_sse_clients",
                "Clients of the event stream",
                Gauge::<i64, AtomicI64>::default,
            ),
            dropped: m.register_once(
                "quake_sse_dropped",
                "Event-stream clients disconnected for falling behind",
                Counter::default,
            ),
            newest_age: m.register_once(
                "quake_newest_event_age_seconds",
                "Age of the newest event held (its origin time to now)",
                Gauge::<f64, AtomicU64>::default,
            ),
            requests: m.register_once("quake_map_requests", "Requests served, by route", Family::default),
        }
    }

    fn request(&self, route: &str) {
        self.requests.get_or_create(&vec![("route".to_owned(), route.to_owned())]).inc();
    }
}

/// quake-map: reads `raw` whole on every replica, and serves the map page
/// (`settings`), `/api/quakes` and `/api/quakes/stream` on the app's HTTP port.
pub fn serve(app: &App, raw: &Topic<String, Quake>, settings: PageSettings) -> QuakeMap {
    let table =
        app.global_table_from("quakes", raw).keep_if(|incoming: &Quake, stored: &Quake| incoming.supersedes(stored));
    let map = QuakeMap {
        index: Arc::default(),
        live: broadcast::channel(STREAM_BUFFER).0,
        metrics: MapMetrics::register(app),
        answers: Arc::default(),
    };
    let follower = map.clone();
    app.task("follow-quakes", move |mut shutdown| {
        let (map, table) = (follower.clone(), table.clone());
        async move {
            // Subscribed before reading the entries, so that nothing applied in between is missed.
            let mut changes = table.changes();
            map.reload(&table)?;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    () = shutdown.wait() => return Ok(()),
                    _ = tick.tick() => map.update_age(),
                    change = changes.next() => match change {
                        Some(change) => map.apply(change, &table)?,
                        None => return Ok(()),
                    },
                }
            }
        }
    });
    app.routes(page::routes(settings).merge(map.router()));
    map
}

impl QuakeMap {
    /// How many events are held.
    pub fn len(&self) -> usize {
        read(&self.index).by_unid.len()
    }

    /// Whether no event is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The features of the creates and updates this replica serves from now
    /// on, as its event stream sends them (for tests and benchmarks that
    /// follow a replica in the process).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.live.subscribe()
    }

    /// The API's routes (the page's are [`page::routes`]).
    pub fn router(&self) -> Router {
        Router::new()
            .route("/api/quakes", get(quakes))
            .route("/api/quakes/stream", get(stream))
            .with_state(self.clone())
    }

    /// Reads every event of the table into the index.
    fn reload(&self, table: &GlobalTable<String, Quake>) -> Result<(), stream_core::Error> {
        let entries = table.entries()?;
        let mut index = write(&self.index);
        *index = Index { version: index.version + 1, ..Index::default() };
        for (_, quake) in entries {
            index.offer(quake);
        }
        self.metrics.events.set(index.by_unid.len() as i64);
        drop(index);
        self.update_age();
        Ok(())
    }

    fn apply(&self, change: Change<String, Quake>, table: &GlobalTable<String, Quake>) -> stream_core::Result<()> {
        match change {
            Change::Set(_, quake) => {
                let (unid, action) = (quake.unid.clone(), quake.action);
                let feature = write(&self.index).offer(quake);
                if let Some(feature) = feature {
                    tracing::debug!(%unid, action = action.as_str(), "event on the map");
                    // No client listening is no error.
                    let _ = self.live.send(feature);
                }
            }
            Change::Removed(unid) => write(&self.index).remove(&unid),
            Change::Missed(n) => {
                tracing::warn!(missed = n, "the map fell behind the table's changes; reloading it");
                self.reload(table)?;
            }
            _ => {}
        }
        self.metrics.events.set(self.len() as i64);
        self.update_age();
        Ok(())
    }

    fn update_age(&self) {
        if let Some(newest) = read(&self.index).newest() {
            let age = (Utc::now() - newest).num_milliseconds() as f64 / 1000.0;
            self.metrics.newest_age.set(age);
        }
    }

    /// The features `query` selects, newest first, and the index version.
    fn select(&self, query: &QuakeQuery) -> (u64, Vec<Arc<str>>) {
        let index = read(&self.index);
        let features = index
            .by_time
            .iter()
            .take_while(|(Reverse(time), _)| query.since.is_none_or(|since| *time >= since))
            .filter_map(|(_, unid)| index.by_unid.get(unid))
            .filter(|held| query.min_mag.is_none_or(|min| held.quake.mag >= min))
            .take(query.limit)
            .map(|held| held.feature.clone())
            .collect();
        (index.version, features)
    }

    /// `/api/quakes`'s body for `query`: the FeatureCollection, made once per
    /// query and index version.
    fn answer(&self, query: &QuakeQuery) -> Bytes {
        let key = (query.since.map(|t| t.timestamp_millis()), query.min_mag.map(f64::to_bits), query.limit);
        let version = read(&self.index).version;
        if let Some((v, body)) = lock(&self.answers).get(&key)
            && *v == version
        {
            return body.clone();
        }
        let (version, features) = self.select(query);
        let mut body = String::with_capacity(64 + features.iter().map(|f| f.len() + 1).sum::<usize>());
        body.push_str(r#"{"type":"FeatureCollection","features":["#);
        for (i, feature) in features.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(feature);
        }
        body.push_str("]}");
        let body = Bytes::from(body);
        let mut answers = lock(&self.answers);
        if answers.len() >= ANSWERS_KEPT {
            answers.retain(|_, (v, _)| *v == version);
            if answers.len() >= ANSWERS_KEPT {
                answers.clear();
            }
        }
        answers.insert(key, (version, body.clone()));
        body
    }
}

fn read(index: &RwLock<Index>) -> std::sync::RwLockReadGuard<'_, Index> {
    index.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write(index: &RwLock<Index>) -> std::sync::RwLockWriteGuard<'_, Index> {
    index.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `/api/quakes`'s parameters, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct QuakeQuery {
    /// Events at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Events of at least this magnitude.
    pub min_mag: Option<f64>,
    /// At most this many.
    pub limit: usize,
}

impl QuakeQuery {
    /// Reads the query parameters; the error names the parameter and why.
    pub fn parse(params: &HashMap<String, String>) -> Result<QuakeQuery, String> {
        let since = match params.get("since") {
            None => None,
            Some(s) => Some(
                DateTime::parse_from_rfc3339(s.trim())
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| format!("since: {:?} is not an RFC 3339 time ({e})", clip(s)))?,
            ),
        };
        let min_mag = match params.get("min_mag") {
            None => None,
            Some(s) => match s.trim().parse::<f64>() {
                Ok(m) if m.is_finite() => Some(m),
                _ => return Err(format!("min_mag: {:?} is not a number", clip(s))),
            },
        };
        let limit = match params.get("limit") {
            None => DEFAULT_LIMIT,
            Some(s) => match s.trim().parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => return Err(format!("limit: {:?} is not a whole number from 1 to {MAX_LIMIT}", clip(s))),
            },
        };
        Ok(QuakeQuery { since, min_mag, limit })
    }
}

/// At most 64 characters of a parameter, for an error message.
fn clip(s: &str) -> &str {
    s.char_indices().nth(64).map_or(s, |(end, _)| &s[..end])
}

async fn quakes(
    State(map): State<QuakeMap>,
    params: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    map.metrics.request("/api/quakes");
    let Ok(Query(params)) = params else {
        return unprocessable("the query string cannot be read");
    };
    let query = match QuakeQuery::parse(&params) {
        Ok(query) => query,
        Err(reason) => return unprocessable(&reason),
    };
    let body = map.answer(&query);
    ([(header::CONTENT_TYPE, "application/geo+json"), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

fn unprocessable(reason: &str) -> Response {
    (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(serde_json::json!({ "error": reason }))).into_response()
}

async fn stream(State(map): State<QuakeMap>) -> Sse<impl Stream<Item = Result<SseEvent, std::convert::Infallible>>> {
    map.metrics.request("/api/quakes/stream");
    let client = Client { rx: map.live.subscribe(), metrics: map.metrics };
    client.metrics.clients.inc();
    let events = futures::stream::unfold(client, |mut client| async move {
        match client.rx.recv().await {
            Ok(feature) => Some((Ok(SseEvent::default().data(&*feature)), client)),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                // Too slow: disconnect it rather than buffer for it.
                client.metrics.dropped.inc();
                tracing::info!(missed, "an event-stream client fell behind; disconnecting it");
                None
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    });
    // A comment at once: the client (and any proxy between) sees the stream open.
    let hello = futures::stream::once(async { Ok(SseEvent::default().comment("connected")) });
    Sse::new(hello.chain(events)).keep_alive(KeepAlive::new().interval(KEEPALIVE).text("keepalive"))
}

/// One event-stream client; counted while it is connected.
struct Client {
    rx: broadcast::Receiver<Arc<str>>,
    metrics: MapMetrics,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.metrics.clients.dec();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::quake::records::Action;

    fn quake(unid: &str, minute: u32, lastupdate_s: i64, mag: f64) -> Quake {
        let time: DateTime<Utc> = format!("2026-12-01T10:{minute:02}:00Z").parse().unwrap();
        Quake {
            action: Action::Create,
            unid: unid.into(),
            time,
            lastupdate: time + chrono::Duration::seconds(lastupdate_s),
            lat: 38.0,
            lon: 21.0,
            depth: Some(10.0),
            mag,
            magtype: Some("ml".into()),
            flynn_region: Some("GREECE".into()),
            auth: None,
            evtype: None,
            source_id: None,
            source_catalog: None,
        }
    }

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn the_index_keeps_each_event_at_its_newest_version_newest_time_first() {
        let mut index = Index::default();
        assert!(index.offer(quake("a", 1, 0, 3.0)).is_some());
        assert!(index.offer(quake("b", 5, 0, 5.0)).is_some());
        assert!(index.offer(quake("c", 3, 0, 2.0)).is_some());
        // An update moves a's time; a stale one changes nothing.
        assert!(index.offer(Quake { action: Action::Update, ..quake("a", 9, 60, 3.5) }).is_some());
        assert!(index.offer(quake("a", 1, 30, 9.0)).is_none());
        let order: Vec<_> = index.by_time.iter().map(|(_, u)| u.as_str()).collect();
        assert_eq!(order, ["a", "b", "c"]);
        assert_eq!(index.by_unid["a"].quake.mag, 3.5);
        assert_eq!(index.by_time.len(), 3);
    }

    #[test]
    fn an_answer_is_shared_until_the_events_change() {
        let app = App::builder("answers").broker("memory://").without_web().build().unwrap();
        let map = QuakeMap {
            index: Arc::default(),
            live: broadcast::channel(STREAM_BUFFER).0,
            metrics: MapMetrics::register(&app),
            answers: Arc::default(),
        };
        write(&map.index).offer(quake("a", 1, 0, 3.0));
        let query = QuakeQuery::parse(&params(&[])).unwrap();
        let first = map.answer(&query);
        let again = map.answer(&query);
        assert_eq!(first.as_ptr(), again.as_ptr(), "one body for both");
        let big = map.answer(&QuakeQuery::parse(&params(&[("min_mag", "4")])).unwrap());
        assert_eq!(&big[..], br#"{"type":"FeatureCollection","features":[]}"#);
        write(&map.index).offer(quake("b", 5, 0, 5.0));
        let after: serde_json::Value = serde_json::from_slice(&map.answer(&query)).unwrap();
        let ids: Vec<&str> = after["features"].as_array().unwrap().iter().map(|f| f["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["b", "a"]);
        // A stale version changes nothing, and the answer stays.
        let before = map.answer(&query);
        assert!(write(&map.index).offer(quake("b", 5, -10, 1.0)).is_none());
        assert_eq!(map.answer(&query).as_ptr(), before.as_ptr());
    }

    #[test]
    fn query_parameters_are_checked() {
        let q = QuakeQuery::parse(&params(&[])).unwrap();
        assert_eq!((q.since, q.min_mag, q.limit), (None, None, DEFAULT_LIMIT));
        let q =
            QuakeQuery::parse(&params(&[("since", "2026-12-01T10:00:00+01:00"), ("min_mag", "4.5"), ("limit", "7")]))
                .unwrap();
        assert_eq!(q.since.map(|t| t.to_rfc3339()), Some("2026-12-01T09:00:00+00:00".into()));
        assert_eq!((q.min_mag, q.limit), (Some(4.5), 7));
        for (name, value, says) in [
            ("since", "yesterday", "since:"),
            ("min_mag", "big", "min_mag:"),
            ("min_mag", "NaN", "min_mag:"),
            ("limit", "0", "limit:"),
            ("limit", "5001", "limit:"),
            ("limit", "-1", "limit:"),
        ] {
            let err = QuakeQuery::parse(&params(&[(name, value)])).unwrap_err();
            assert!(err.starts_with(says), "{name}={value}: {err}");
        }
        let long = "x".repeat(10_000);
        assert!(QuakeQuery::parse(&params(&[("since", &long)])).unwrap_err().len() < 200);
    }
}
