//! What quake-loader does: the Postgres table `quakes`, one row per
//! earthquake (`unid`) of `quakes.raw`, at its latest version.
//!
//! EMSC sends an event when it is created and again at every revision; the
//! row holds the version with the latest `lastupdate`. Rows are upserted
//! with `ON CONFLICT (unid) DO UPDATE ... WHERE quakes.lastupdate <
//! EXCLUDED.lastupdate`, so a late, stale version never overwrites a newer
//! one, and a replay after a crash (the loader commits a batch's events only
//! once its rows are written) changes nothing. Postgres refuses an upsert
//! that meets one key twice, so each batch is first reduced to the latest
//! version of each `unid` ([`newest_per_unid`]).
//!
//! The one-process demo keeps the same rows in the [`Embedded`] database
//! instead (its tree `quakes`), with the same rule.
//!
//! Metrics: `strom_rows_loaded_total{table="quakes"}` (rows inserted or
//! updated; the family db-loader counts its rows in) and
//! `strom_quake_stale_updates_total` (versions that changed no row: stale,
//! replayed, or overtaken by a later version in the same batch).

use std::time::SystemTime;

use stream_core::connect::postgres::{PgError, PgSink, ToRow, ToSql};
use stream_core::metrics::prometheus_client::metrics::counter::Counter;
use stream_core::metrics::prometheus_client::metrics::family::Family;
use stream_core::prelude::*;

use super::records::Quake;
use crate::embedded::Embedded;
use crate::loader::Database;

/// The table.
pub const TABLE: &str = "quakes";

/// The table, created on start when missing, and its index for "the latest
/// events". `action` is the last applied version's; `loaded_at` is when the
/// row was inserted or last updated.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS quakes (
    unid           text             PRIMARY KEY,
    time           timestamptz      NOT NULL,
    lastupdate     timestamptz      NOT NULL,
    lat            double precision NOT NULL,
    lon            double precision NOT NULL,
    depth          double precision,
    mag            double precision NOT NULL,
    magtype        text,
    flynn_region   text,
    auth           text,
    evtype         text,
    source_id      text,
    source_catalog text,
    action         text,
    loaded_at      timestamptz      NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS quakes_time ON quakes (time DESC)";

/// The columns the loader writes, in the order of [`QuakeRow`]'s values.
const COLUMNS: &[&str] = &[
    "unid",
    "time",
    "lastupdate",
    "lat",
    "lon",
    "depth",
    "mag",
    "magtype",
    "flynn_region",
    "auth",
    "evtype",
    "source_id",
    "source_catalog",
    "action",
];

/// How many events one upsert takes at most (what has arrived: see
/// [`take_ready`](stream_core::EventStream::take_ready)).
const BATCH: usize = 500;

/// The Postgres database at `url` (a `DATABASE_URL`), its connector's
/// metrics on the app's registry. The database (when missing) and
/// [`SCHEMA`] are created as soon as Postgres answers, in the background,
/// and before the first insert in any case: the service starts at once, and
/// its agents wait for Postgres while it cannot be reached.
pub async fn postgres(app: &App, url: &str) -> Result<Database, PgError> {
    crate::loader::postgres_with(app, url, SCHEMA)
}

/// Declares the agent `load-quakes`, which keeps every quake of `raw` as the
/// row of its `unid` in `db` (the table [`SCHEMA`] creates, or the embedded
/// database's quakes), at its latest version, a batch per upsert. A batch's
/// events are committed once its rows are written; while Postgres is down
/// the agent waits and retries.
pub fn load(app: &App, raw: &Topic<String, Quake>, db: &Database) {
    let sink = match db {
        Database::Postgres(pg) => Sink::Postgres(PgSink::new(pg, TABLE, COLUMNS).on_conflict(&on_conflict())),
        Database::Embedded(embedded) => Sink::Embedded(embedded.clone()),
    };
    let rows: Family<Vec<(String, String)>, Counter> =
        app.metrics().register_once("rows_loaded", "Rows added to the database, by table", Family::default);
    let rows = rows.get_or_create(&vec![("table".to_owned(), TABLE.to_owned())]).clone();
    let stale: Counter = app.metrics().register_once(
        "quake_stale_updates",
        "Quake versions that changed no row: stale, replayed, or overtaken in their batch",
        Counter::default,
    );
    app.agent("load-quakes", raw, move |events| {
        let (sink, rows, stale) = (sink.clone(), rows.clone(), stale.clone());
        async move {
            let mut batches = events.take_ready(BATCH);
            while let Some(batch) = batches.next().await {
                let newest = newest_per_unid(batch.iter().map(Event::value));
                let changed = sink.upsert(&newest).await?;
                rows.inc_by(changed);
                stale.inc_by((batch.len() as u64).saturating_sub(changed));
            }
            Ok(())
        }
    });
}

/// The latest version of each `unid` among `quakes`: of several versions
/// the one with the latest `lastupdate` ([`Quake::supersedes`]), the first
/// of those when several share it (as the table keeps the first one
/// written). The `unid`s keep the order of their first version.
pub fn newest_per_unid<'q>(quakes: impl IntoIterator<Item = &'q Quake>) -> Vec<&'q Quake> {
    let mut newest: Vec<&Quake> = Vec::new();
    let mut index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for quake in quakes {
        match index.get(quake.unid.as_str()) {
            Some(&i) => {
                if let Some(kept) = newest.get_mut(i)
                    && quake.supersedes(kept)
                {
                    *kept = quake;
                }
            }
            None => {
                index.insert(quake.unid.as_str(), newest.len());
                newest.push(quake);
            }
        }
    }
    newest
}

/// `(unid) DO UPDATE SET <every other column> = EXCLUDED..., loaded_at = now()
/// WHERE quakes.lastupdate < EXCLUDED.lastupdate`.
fn on_conflict() -> String {
    let set: Vec<String> = COLUMNS.iter().filter(|&&c| c != "unid").map(|c| format!("{c} = EXCLUDED.{c}")).collect();
    format!("(unid) DO UPDATE SET {}, loaded_at = now() WHERE {TABLE}.lastupdate < EXCLUDED.lastupdate", set.join(", "))
}

/// Where the quakes go.
#[derive(Clone)]
enum Sink {
    Postgres(PgSink),
    Embedded(Embedded),
}

impl Sink {
    /// Upserts the quakes (at most one per `unid`) and returns how many rows
    /// were inserted or updated.
    async fn upsert(&self, quakes: &[&Quake]) -> Result<u64, BoxError> {
        Ok(match self {
            Sink::Postgres(sink) => sink.insert(quakes.iter().map(|&q| QuakeRow::of(q))).await?,
            Sink::Embedded(db) => db.upsert_quakes(quakes.iter().map(|&q| q.clone())).await?,
        })
    }
}

/// A quake as the values of [`COLUMNS`].
struct QuakeRow<'q> {
    quake: &'q Quake,
    time: SystemTime,
    lastupdate: SystemTime,
    action: &'static str,
}

impl<'q> QuakeRow<'q> {
    fn of(quake: &'q Quake) -> QuakeRow<'q> {
        QuakeRow { quake, time: quake.time.into(), lastupdate: quake.lastupdate.into(), action: quake.action.as_str() }
    }
}

impl ToRow for QuakeRow<'_> {
    fn values<'a>(&'a self, out: &mut Vec<&'a (dyn ToSql + Sync)>) {
        let q = self.quake;
        out.extend([
            &q.unid as &(dyn ToSql + Sync),
            &self.time,
            &self.lastupdate,
            &q.lat,
            &q.lon,
            &q.depth,
            &q.mag,
            &q.magtype,
            &q.flynn_region,
            &q.auth,
            &q.evtype,
            &q.source_id,
            &q.source_catalog,
            &self.action,
        ]);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use chrono::{DateTime, Duration, Utc};

    use super::*;
    use crate::quake::records::Action;

    fn quake(unid: &str, lastupdate_s: i64, mag: f64) -> Quake {
        let time: DateTime<Utc> = "2026-12-01T10:00:00.5Z".parse().unwrap();
        Quake {
            action: if lastupdate_s == 0 { Action::Create } else { Action::Update },
            unid: unid.into(),
            time,
            lastupdate: time + Duration::seconds(lastupdate_s),
            lat: 38.1,
            lon: 21.3,
            depth: Some(10.0),
            mag,
            magtype: Some("ml".into()),
            flynn_region: Some("GREECE".into()),
            auth: Some("EMSC".into()),
            evtype: Some("ke".into()),
            source_id: None,
            source_catalog: None,
        }
    }

    fn reduce(quakes: &[Quake]) -> Vec<(String, f64)> {
        newest_per_unid(quakes).into_iter().map(|q| (q.unid.clone(), q.mag)).collect()
    }

    #[test]
    fn distinct_quakes_are_kept_in_order() {
        assert!(newest_per_unid(&[]).is_empty());
        let batch = [quake("b", 0, 1.0), quake("a", 0, 2.0), quake("c", 0, 3.0)];
        assert_eq!(reduce(&batch), [("b".into(), 1.0), ("a".into(), 2.0), ("c".into(), 3.0)]);
    }

    #[test]
    fn a_later_revision_in_the_batch_takes_the_place_of_the_earlier_one() {
        let batch = [quake("a", 0, 1.0), quake("b", 0, 2.0), quake("a", 60, 1.5), quake("a", 120, 1.7)];
        assert_eq!(reduce(&batch), [("a".into(), 1.7), ("b".into(), 2.0)]);
    }

    #[test]
    fn a_stale_or_repeated_version_in_the_batch_is_dropped() {
        // Stale after newer; a replay of the same version; the same lastupdate with other values.
        let batch = [quake("a", 60, 1.5), quake("a", 30, 9.9), quake("b", 0, 2.0), quake("b", 0, 2.0)];
        assert_eq!(reduce(&batch), [("a".into(), 1.5), ("b".into(), 2.0)]);
        let batch = [quake("a", 60, 1.5), quake("a", 60, 9.9)];
        assert_eq!(reduce(&batch), [("a".into(), 1.5)], "the first of equal revisions stays, as in the table");
    }

    #[test]
    fn every_version_in_any_order_leaves_the_latest() {
        // 20 versions, the latest in the middle.
        let batch: Vec<Quake> = (0..20).map(|i| (i * 7) % 20).map(|i| quake("d", i, i as f64)).collect();
        assert_eq!(reduce(&batch), [("d".into(), 19.0)]);
    }

    #[test]
    fn the_upsert_updates_every_written_column_only_when_newer() {
        let clause = on_conflict();
        assert!(clause.starts_with("(unid) DO UPDATE SET time = EXCLUDED.time, "), "{clause}");
        assert!(
            clause
                .ends_with("action = EXCLUDED.action, loaded_at = now() WHERE quakes.lastupdate < EXCLUDED.lastupdate")
        );
        for column in COLUMNS {
            assert!(SCHEMA.contains(&format!("\n    {column} ")), "{column} is a column of the table");
            if *column != "unid" {
                assert!(clause.contains(&format!("{column} = EXCLUDED.{column}")), "{column} is updated");
            }
        }
        let mut values = Vec::new();
        let q = quake("a", 0, 1.0);
        let row = QuakeRow::of(&q);
        row.values(&mut values);
        assert_eq!(values.len(), COLUMNS.len());
    }
}
