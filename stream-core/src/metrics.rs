//! Prometheus metrics: one registry per app, served as text by the worker's
//! HTTP endpoint (`/metrics`) and by [`Metrics::encode`].
//!
//! Counters that sit on the hot path (events received and processed per agent,
//! sends acknowledged) are plain atomics owned by the parts that count them;
//! a collector reads them at scrape time, so counting costs nothing more than
//! the increment. Rarer events (commits, rebalances) are `prometheus-client`
//! metrics updated where they happen. Services register their own metrics on
//! the same registry with [`Metrics::register`].

/// The Prometheus client the registry is made of, for services' own metrics.
pub use prometheus_client;

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

use crate::agent::AgentStats;
use crate::table::TableStats;
use crate::tracking::{SendTracker, lock};

/// Labels naming a rebalance kind (`assigned` or `revoked`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabel {
    pub(crate) kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentTopicLabels {
    agent: String,
    topic: String,
}

/// No labels (for an exemplar-less histogram).
type NoLabels = Vec<(String, String)>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    topic: String,
    partition: i32,
}

/// Where the collector finds the live values of a running worker.
pub(crate) trait WorkerProbe: Send + Sync + 'static {
    /// Each agent: name, source topic, counters.
    fn agents(&self) -> Vec<(String, String, Arc<AgentStats>)>;
    /// Each assigned partition: topic, partition, lag (end offset minus committed position), if known.
    fn lag(&self) -> Vec<(String, i32, Option<i64>)>;
    /// Whether the worker had its first assignment.
    fn ready(&self) -> bool;
    /// Partitions paused because an agent is behind.
    fn paused(&self) -> usize;
}

/// The metrics of an app.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

/// The declared tables' names and counters.
type TableList = Arc<Mutex<Vec<(String, Arc<TableStats>)>>>;

struct Inner {
    registry: Mutex<Registry>,
    /// Metrics registered with [`Metrics::register_once`], by name.
    once: Mutex<HashMap<String, Box<dyn Any + Send + Sync>>>,
    tables: TableList,
    probe: Arc<Mutex<Option<Arc<dyn WorkerProbe>>>>,
    pub(crate) commits: Counter,
    pub(crate) commit_failures: Counter,
    pub(crate) commit_seconds: Histogram,
    pub(crate) rebalances: Family<KindLabel, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Buckets for durations from 50 µs to about 26 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(LATENCY_BASE_NS as f64 / 1e9, 2.0, LATENCY_BUCKETS as u16)
}

const LATENCY_BASE_NS: u64 = 50_000;
const LATENCY_BUCKETS: usize = 20;

/// A latency histogram for the hot path: observing is a bucket index and
/// three relaxed atomic additions, no lock (prometheus-client's histogram
/// takes a lock per observation). Buckets as [`latency_buckets`], plus +Inf.
#[derive(Debug, Default)]
pub struct Latency {
    buckets: [AtomicU64; LATENCY_BUCKETS + 1],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Latency {
    /// Records `n` observations of `ns` nanoseconds each.
    pub fn observe_ns(&self, ns: u64, n: u64) {
        let index = if ns <= LATENCY_BASE_NS {
            0
        } else {
            // The smallest i with ns <= base * 2^i.
            let ratio = (ns - 1) / LATENCY_BASE_NS;
            ((u64::BITS - ratio.leading_zeros()) as usize).min(LATENCY_BUCKETS)
        };
        self.buckets[index].fetch_add(n, Ordering::Relaxed);
        self.count.fetch_add(n, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns.saturating_mul(n), Ordering::Relaxed);
    }

    /// How many observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn encode(&self, encoder: &mut prometheus_client::encoding::MetricEncoder<'_>) -> std::fmt::Result {
        let bounds = latency_buckets().chain(std::iter::once(f64::INFINITY));
        let buckets: Vec<(f64, u64)> =
            bounds.zip(self.buckets.iter()).map(|(b, c)| (b, c.load(Ordering::Relaxed))).collect();
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabels>(sum, self.count(), &buckets, None)
    }
}

impl Metrics {
    pub(crate) fn new(sends: Arc<SendTracker>) -> Metrics {
        let mut registry = Registry::with_prefix("strom");
        let commits = Counter::default();
        let commit_failures = Counter::default();
        let commit_seconds = Histogram::new(latency_buckets());
        let rebalances = Family::<KindLabel, Counter>::default();
        registry.register("commits", "Offset commits that succeeded", commits.clone());
        registry.register("commit_failures", "Offset commits the broker refused", commit_failures.clone());
        registry.register("commit_latency_seconds", "Time an offset commit took", commit_seconds.clone());
        registry.register("rebalances", "Partition assignments and revocations", rebalances.clone());
        let probe: Arc<Mutex<Option<Arc<dyn WorkerProbe>>>> = Arc::default();
        registry.register_collector(Box::new(WorkerCollector { probe: probe.clone(), sends }));
        let tables = TableList::default();
        registry.register_collector(Box::new(TableCollector { tables: tables.clone() }));
        Metrics {
            inner: Arc::new(Inner {
                registry: Mutex::new(registry),
                once: Mutex::default(),
                tables,
                probe,
                commits,
                commit_failures,
                commit_seconds,
                rebalances,
            }),
        }
    }

    /// Registers a service's own metric (its name gets the `strom_` prefix).
    ///
    /// ```
    /// use stream_core::metrics::prometheus_client::metrics::counter::Counter;
    /// let app = stream_core::App::builder("svc").broker("memory://").build()?;
    /// let loaded = Counter::<u64>::default();
    /// app.metrics().register("rows_loaded", "Rows written to the database", loaded.clone());
    /// loaded.inc();
    /// assert!(app.metrics().encode().contains("strom_rows_loaded_total 1"));
    /// # Ok::<(), stream_core::Error>(())
    /// ```
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        lock(&self.inner.registry).register(name, help, metric);
    }

    /// Registers `make()` under `name` the first time, and returns that same
    /// metric on every later call: for components of which an app may have
    /// several (two MQTT sources, say), each adding its own labels to one
    /// family. A metric of another type already registered under `name` is a
    /// mistake: it is logged, and the returned metric is not registered.
    ///
    /// ```
    /// use stream_core::metrics::prometheus_client::metrics::{counter::Counter, family::Family};
    /// let app = stream_core::App::builder("svc").broker("memory://").build()?;
    /// type Rows = Family<Vec<(String, String)>, Counter>;
    /// let a: Rows = app.metrics().register_once("rows", "Rows written", Rows::default);
    /// let b: Rows = app.metrics().register_once("rows", "Rows written", Rows::default);
    /// a.get_or_create(&vec![("table".into(), "a".into())]).inc();
    /// b.get_or_create(&vec![("table".into(), "b".into())]).inc();
    /// let text = app.metrics().encode();
    /// assert!(text.contains(r#"strom_rows_total{table="a"} 1"#) && text.contains(r#"strom_rows_total{table="b"} 1"#));
    /// # Ok::<(), stream_core::Error>(())
    /// ```
    pub fn register_once<M: Metric + Clone>(&self, name: &str, help: &str, make: impl FnOnce() -> M) -> M {
        let mut once = lock(&self.inner.once);
        if let Some(existing) = once.get(name) {
            if let Some(metric) = existing.downcast_ref::<M>() {
                return metric.clone();
            }
            tracing::error!(metric = name, "metric registered twice with different types; the second is not exported");
            return make();
        }
        let metric = make();
        once.insert(name.to_owned(), Box::new(metric.clone()));
        self.register(name, help, metric.clone());
        metric
    }

    /// Everything in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = lock(&self.inner.registry);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }

    pub(crate) fn add_table(&self, name: &str, stats: Arc<TableStats>) {
        lock(&self.inner.tables).push((name.to_owned(), stats));
    }

    pub(crate) fn attach(&self, probe: Arc<dyn WorkerProbe>) {
        *lock(&self.inner.probe) = Some(probe);
    }

    pub(crate) fn detach(&self) {
        *lock(&self.inner.probe) = None;
    }

    pub(crate) fn commit_done(&self, took: Duration, ok: bool) {
        if ok {
            self.inner.commits.inc();
            self.inner.commit_seconds.observe(took.as_secs_f64());
        } else {
            self.inner.commit_failures.inc();
        }
    }

    pub(crate) fn rebalance(&self, kind: &'static str) {
        self.inner.rebalances.get_or_create(&KindLabel { kind }).inc();
    }
}

/// Reads a running worker's counters at scrape time.
struct WorkerCollector {
    probe: Arc<Mutex<Option<Arc<dyn WorkerProbe>>>>,
    sends: Arc<SendTracker>,
}

impl std::fmt::Debug for WorkerCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerCollector").finish_non_exhaustive()
    }
}

fn counter(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let c = ConstCounter::new(value);
    c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: i64) -> std::fmt::Result {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for WorkerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let acked = self.sends.acked_below();
        counter(&mut encoder, "messages_produced", "Messages produced and acknowledged by the broker", acked)?;
        let in_flight = self.sends.issued().saturating_sub(acked) as i64;
        gauge(&mut encoder, "messages_in_flight", "Messages produced and not yet acknowledged", in_flight)?;
        let probe = lock(&self.probe).clone();
        let Some(probe) = probe else { return Ok(()) };
        gauge(&mut encoder, "ready", "1 once the worker had its first assignment", i64::from(probe.ready()))?;
        let paused = probe.paused() as i64;
        gauge(&mut encoder, "paused_partitions", "Partitions paused because an agent is behind", paused)?;

        let agents: Vec<(AgentTopicLabels, Arc<AgentStats>)> = probe
            .agents()
            .into_iter()
            .map(|(agent, topic, stats)| (AgentTopicLabels { agent, topic }, stats))
            .collect();
        type Field = fn(&AgentStats) -> &std::sync::atomic::AtomicU64;
        let families: [(&str, &str, Field); 5] = [
            ("events_received", "Events read by an agent", |s| &s.received),
            ("events_processed", "Events an agent's handler finished", |s| &s.processed),
            ("events_failed", "Handler errors and panics", |s| &s.failed),
            ("events_retried", "Retries of failed events", |s| &s.retried),
            ("dead_letters", "Messages sent to a dead-letter topic", |s| &s.dead_lettered),
        ];
        for (name, help, field) in families {
            let mut family =
                encoder.encode_descriptor(name, help, None, prometheus_client::metrics::MetricType::Counter)?;
            for (labels, stats) in &agents {
                let c = ConstCounter::new(field(stats).load(Ordering::Relaxed));
                c.encode(family.encode_family(labels)?)?;
            }
        }

        {
            let mut latency = encoder.encode_descriptor(
                "processing_latency_seconds",
                "Time from an event reaching its agent to the handler being done with it",
                None,
                prometheus_client::metrics::MetricType::Histogram,
            )?;
            for (labels, stats) in &agents {
                stats.latency.encode(&mut latency.encode_family(labels)?)?;
            }
        }

        let mut lag = encoder.encode_descriptor(
            "consumer_lag",
            "Messages between the committed position and the end of an assigned partition",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (topic, partition, value) in probe.lag() {
            if let Some(value) = value {
                let g = ConstGauge::new(value.max(0));
                g.encode(lag.encode_family(&PartitionLabels { topic, partition })?)?;
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabels {
    table: String,
}

/// Reads the tables' counters at scrape time.
struct TableCollector {
    tables: TableList,
}

impl std::fmt::Debug for TableCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableCollector").finish_non_exhaustive()
    }
}

impl Collector for TableCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let tables = lock(&self.tables).clone();
        if tables.is_empty() {
            return Ok(());
        }
        type Count = fn(&TableStats) -> &std::sync::atomic::AtomicU64;
        let counters: [(&str, &str, Count); 7] = [
            ("table_changelog_writes", "Table changes written (each also produced to the changelog)", |s| &s.writes),
            ("table_recovered_records", "Changelog records replayed into the store by recoveries", |s| &s.replayed),
            ("table_recoveries", "Table partition recoveries finished", |s| &s.recoveries),
            ("table_rebuilds", "Table partitions rebuilt from the whole changelog", |s| &s.rebuilt),
            ("table_late_events", "Events too late for any open window of a windowed table", |s| &s.late_events),
            ("table_windows_closed", "Windows closed by the watermark or by idleness", |s| &s.windows_closed),
            (
                "table_versions_not_kept",
                "Versions a global table's keep rule did not keep (older than the one held)",
                |s| &s.not_kept,
            ),
        ];
        for (name, help, value) in counters {
            let mut family =
                encoder.encode_descriptor(name, help, None, prometheus_client::metrics::MetricType::Counter)?;
            for (table, stats) in &tables {
                let c = ConstCounter::new(value(stats).load(Ordering::Relaxed));
                c.encode(family.encode_family(&TableLabels { table: table.clone() })?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "table_recovery_seconds",
                "Time spent recovering table partitions",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (table, stats) in &tables {
                let c = ConstCounter::new(stats.recovery_ns.load(Ordering::Relaxed) as f64 / 1e9);
                c.encode(family.encode_family(&TableLabels { table: table.clone() })?)?;
            }
        }
        type Level = fn(&TableStats) -> i64;
        let gauges: [(&str, &str, Level); 2] = [
            ("table_partitions", "Table partitions this worker serves", |s| s.partitions.load(Ordering::Relaxed)),
            ("table_recovering_partitions", "Table partitions recovering now", |s| {
                s.recovering.load(Ordering::Relaxed)
            }),
        ];
        for (name, help, value) in gauges {
            let mut family =
                encoder.encode_descriptor(name, help, None, prometheus_client::metrics::MetricType::Gauge)?;
            for (table, stats) in &tables {
                let g = ConstGauge::new(value(stats));
                g.encode(family.encode_family(&TableLabels { table: table.clone() })?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_hold_what_they_say() {
        let l = Latency::default();
        l.observe_ns(10_000, 1); // 10 µs: the first bucket (<= 50 µs)
        l.observe_ns(50_000, 1); // exactly the first bound
        l.observe_ns(50_001, 2); // just above: the second (<= 100 µs)
        l.observe_ns(1_000_000, 1); // 1 ms: <= 1.6 ms, the sixth
        l.observe_ns(u64::MAX / 4, 1); // beyond every bound: +Inf
        let counts: Vec<u64> = l.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        assert_eq!(counts[0], 2);
        assert_eq!(counts[1], 2);
        assert_eq!(counts[5], 1);
        assert_eq!(counts[LATENCY_BUCKETS], 1);
        assert_eq!(l.count(), 6);
        let bounds: Vec<f64> = latency_buckets().collect();
        assert!((bounds[5] - 0.0016).abs() < 1e-12);
    }
}
