//! Windowed tables on every transport, against references computed here over
//! pseudo-random event times: tumbling, hopping, sliding and count windows,
//! late events within and beyond grace, idle close, bounded state.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stream_core::prelude::*;
use stream_core::table::window::{Window, Windows};
use stream_core::testing::TestDriver;

mod common;
use common::{Env, WAIT};

/// A small deterministic generator (the tests need no crate for it).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

/// `n` events: (key, event time, value), times moving forward with jitter,
/// some far enough behind to be late beyond any grace used here.
fn events(n: usize, seed: u64) -> Vec<(String, i64, i64)> {
    let mut rng = Lcg(seed);
    (0..n)
        .map(|i| {
            let key = format!("k{}", rng.next(3));
            let jitter = rng.next(3_300) as i64 - 3_000;
            (key, 1_000_000 + i as i64 * 100 + jitter, rng.next(100) as i64)
        })
        .collect()
}

fn app(env: &Env, id: &str, dir: &std::path::Path) -> App {
    let url = match env {
        Env::Memory => format!("memory://{id}-{}", dir.file_name().unwrap().to_string_lossy()),
        Env::Kafka(url) => url.clone(),
    };
    TestDriver::builder_on(&url, id).state_dir(dir).build().unwrap()
}

/// Sends the events in order to partition 0, with their event times as
/// broker timestamps.
async fn send(topic: &Topic<String, i64>, events: &[(String, i64, i64)]) {
    let mut receipts = Vec::new();
    for (key, time, value) in events {
        receipts.push(topic.message(value).key(key).partition(0).timestamp_ms(*time).send().await.unwrap());
    }
    for r in receipts {
        r.await.unwrap();
    }
}

/// What the windows should hold: the sum per (key, window) of the events not
/// late, and how many were late, processing in order with one watermark.
fn reference(windows: Windows, grace: i64, events: &[(String, i64, i64)]) -> (BTreeMap<(String, Window), i64>, u64) {
    let mut sums = BTreeMap::new();
    let (mut watermark, mut late) = (i64::MIN, 0);
    for (key, time, value) in events {
        let open: Vec<Window> = windows.of(*time).into_iter().filter(|w| w.end + grace > watermark).collect();
        if open.is_empty() {
            late += 1;
        }
        for w in open {
            *sums.entry((key.clone(), w)).or_insert(0) += value;
        }
        watermark = watermark.max(*time);
    }
    (sums, late)
}

async fn windows_match_the_reference(env: Env, windows: Windows, name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let app = app(&env, name, dir.path());
    let readings = app.topic::<String, i64>("readings").partitions(1);
    let grace = 700;
    let closed: Arc<Mutex<Vec<(String, Window, i64)>>> = Arc::default();
    let late_seen = Arc::new(AtomicU64::new(0));
    let (sink, late_count) = (closed.clone(), late_seen.clone());
    let sums = app
        .windowed_table::<String, i64>("sums", &readings, windows)
        .grace(Duration::from_millis(grace as u64))
        .idle_close(Duration::from_millis(300))
        .on_late(move |_key, _time| {
            late_count.fetch_add(1, Ordering::Relaxed);
        })
        .on_window_close(move |key, window, sum| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push((key, window, sum));
                Ok(())
            }
        });
    let handled = Arc::new(AtomicUsize::new(0));
    let (table, count) = (sums.clone(), handled.clone());
    app.agent("sum", &readings, move |mut readings| {
        let (sums, handled) = (table.clone(), count.clone());
        async move {
            while let Some(r) = readings.next().await {
                let key = r.key().cloned().unwrap_or_default();
                sums.at(&r)?.update(&key, |s| s.unwrap_or(0) + r.value()).await?;
                handled.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }
    });
    let driver = TestDriver::start(&app).await.unwrap();
    let input = events(600, 7);
    send(&readings, &input).await;
    let (expected, late) = reference(windows, grace, &input);
    assert!(late > 10, "the input has late events beyond grace ({late})");
    // Everything is handled, then the idle partition closes its last windows.
    driver
        .wait_until(WAIT, async |_| {
            Ok(handled.load(Ordering::Relaxed) == input.len() && closed.lock().unwrap().len() >= expected.len())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}: {} closed of {}", closed.lock().unwrap().len(), expected.len()));
    let closed = closed.lock().unwrap().clone();
    let mut got = BTreeMap::new();
    for (key, window, sum) in closed {
        assert!(got.insert((key, window), sum).is_none(), "a window closed twice: {window:?}");
    }
    let diff: Vec<_> = expected.iter().filter(|(k, v)| got.get(*k) != Some(v)).take(5).collect();
    assert!(diff.is_empty(), "{} windows vs {} expected; e.g. {diff:?}", got.len(), expected.len());
    assert_eq!(got.len(), expected.len());
    assert_eq!(late_seen.load(Ordering::Relaxed), late, "late events beyond grace go to on_late");
    assert_eq!(sums.table().stats().late_events.load(Ordering::Relaxed), late);
    assert!(sums.open_windows().unwrap().is_empty(), "closed windows leave the table");
    driver.stop().await.unwrap();
}

async fn tumbling_windows_match_the_reference(env: Env) {
    windows_match_the_reference(env, Windows::tumbling(Duration::from_secs(1)), "tumbling").await;
}

async fn hopping_windows_match_the_reference(env: Env) {
    windows_match_the_reference(env, Windows::hopping(Duration::from_secs(2), Duration::from_millis(500)), "hopping")
        .await;
}

async fn window_state_stays_bounded_over_a_long_run(env: Env) {
    let dir = tempfile::tempdir().unwrap();
    let app = app(&env, "bounded", dir.path());
    let readings = app.topic::<String, i64>("readings").partitions(1);
    let windows = Windows::tumbling(Duration::from_millis(200));
    let counts = app.windowed_table::<String, i64>("counts", &readings, windows);
    let handled = Arc::new(AtomicUsize::new(0));
    let most_open = Arc::new(AtomicUsize::new(0));
    let (table, count, most) = (counts.clone(), handled.clone(), most_open.clone());
    app.agent("count", &readings, move |mut readings| {
        let (counts, handled, most) = (table.clone(), count.clone(), most.clone());
        async move {
            while let Some(r) = readings.next().await {
                let key = r.key().cloned().unwrap_or_default();
                counts.at(&r)?.update(&key, |n| n.unwrap_or(0) + 1).await?;
                most.fetch_max(counts.open_windows()?.len(), Ordering::Relaxed);
                handled.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }
    });
    let driver = TestDriver::start(&app).await.unwrap();
    // 3,000 events over 1,500 windows of 5 keys, in order.
    let input: Vec<(String, i64, i64)> = (0..3_000).map(|i| (format!("k{}", i % 5), 1_000_000 + i * 100, 1)).collect();
    send(&readings, &input).await;
    driver.wait_until(WAIT, async |_| Ok(handled.load(Ordering::Relaxed) == input.len())).await.unwrap();
    let most = most_open.load(Ordering::Relaxed);
    assert!(most <= 10, "at most two windows per key are open at once, not {most}");
    let closed = counts.table().stats().windows_closed.load(Ordering::Relaxed) as usize;
    // Two events of different keys per window: 3,000 (key, window) pairs.
    assert_eq!(closed + counts.open_windows().unwrap().len(), 3_000, "every window of every key closes once");
    driver.stop().await.unwrap();
}

async fn count_and_sliding_windows_match_the_reference(env: Env) {
    let dir = tempfile::tempdir().unwrap();
    let app = app(&env, "count-sliding", dir.path());
    let readings = app.topic::<String, i64>("readings").partitions(1);
    let last5 = app.count_windows::<String, i64>("last-5", &readings, 5);
    let (size, grace) = (1_000, 500);
    let sliding = app
        .sliding_windows::<String, i64>("last-second", &readings, Duration::from_millis(size))
        .grace(Duration::from_millis(grace));
    type Seen = Arc<Mutex<Vec<(Vec<i64>, Option<Vec<i64>>)>>>;
    let seen: Seen = Arc::default();
    let (count_table, sliding_table, sink) = (last5.clone(), sliding.clone(), seen.clone());
    app.agent("windows", &readings, move |mut readings| {
        let (last5, sliding, sink) = (count_table.clone(), sliding_table.clone(), sink.clone());
        async move {
            while let Some(r) = readings.next().await {
                let key = r.key().cloned().unwrap_or_default();
                let recent = last5.push(&r, &key, *r.value()).await?;
                let window = sliding.push(&r, &key, *r.value()).await?;
                sink.lock().unwrap().push((recent, window));
            }
            Ok(())
        }
    });
    let driver = TestDriver::start(&app).await.unwrap();
    let input = events(400, 11);
    send(&readings, &input).await;
    driver.wait_until(WAIT, async |_| Ok(seen.lock().unwrap().len() == input.len())).await.unwrap();

    let mut history: HashMap<&str, Vec<(i64, i64)>> = HashMap::new();
    let mut arrived: HashMap<&str, Vec<i64>> = HashMap::new();
    let mut late = 0;
    for ((key, time, value), (recent, window)) in input.iter().zip(seen.lock().unwrap().iter()) {
        // The count window takes every value, in order of arrival.
        let values = arrived.entry(key).or_default();
        values.push(*value);
        assert_eq!(recent, &values[values.len().saturating_sub(5)..], "count window of {key}");
        let accepted = history.entry(key).or_default();
        let latest = accepted.iter().map(|(t, _)| *t).max().unwrap_or(i64::MIN);
        let expected_window = if *time < latest.saturating_sub(size as i64 + grace as i64) {
            late += 1;
            None
        } else {
            accepted.push((*time, *value));
            accepted.sort_by_key(|(t, _)| *t);
            Some(accepted.iter().filter(|(t, _)| *t >= time - size as i64 && t <= time).map(|(_, v)| *v).collect())
        };
        assert_eq!(window, &expected_window, "sliding window of {key} at {time}");
    }
    assert!(late > 0, "the input has late events for the sliding window");
    assert_eq!(sliding.table().stats().late_events.load(Ordering::Relaxed), late);
    driver.stop().await.unwrap();
}

on_every_transport!(
    tumbling_windows_match_the_reference,
    hopping_windows_match_the_reference,
    window_state_stays_bounded_over_a_long_run,
    count_and_sliding_windows_match_the_reference,
);
