//! Tables on every transport: counts that survive restarts, a changelog that
//! agrees with the store, recovery that replays only the tail, and a store
//! rebuilt from the changelog when its directory is gone.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use stream_core::prelude::*;
use stream_core::testing::TestDriver;
use stream_core::{AppBuilder, Change, GlobalTable};

mod common;
use common::{Env, WAIT};

/// A counting app: `events` (4 partitions, keyed) → table `counts` (events
/// per key). Each event of value `n > 1` also sets `n` keys `bulk-<i>` (to
/// fill a table fast).
fn counting(builder: AppBuilder) -> (App, Topic<String, u32>, Table<String, u64>) {
    let app = builder.build().unwrap();
    let events = app.topic::<String, u32>("events").partitions(4);
    let counts = app.table::<String, u64>("counts", &events);
    let table = counts.clone();
    app.agent("count", &events, move |mut events| {
        let counts = table.clone();
        async move {
            while let Some(event) = events.next().await {
                let Some(key) = event.key() else { continue };
                let part = counts.at(&event)?;
                part.update(key, |n| n.unwrap_or(0) + 1).await?;
                for i in 1..*event.value() {
                    part.insert(&format!("{key}/bulk-{i}"), &1).await?;
                }
            }
            Ok(())
        }
    });
    (app, events, counts)
}

fn builder(env: &Env, dir: &Path) -> AppBuilder {
    let url = match env {
        Env::Memory => format!("memory://tables-{}", dir.file_name().unwrap().to_string_lossy()),
        Env::Kafka(url) => url.clone(),
    };
    TestDriver::builder_on(&url, "tables").state_dir(dir)
}

/// Starts the worker, retrying while the previous (dropped) worker of the same
/// state directory still holds its store.
async fn start(app: &App) -> TestDriver {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match TestDriver::start(app).await {
            Ok(driver) => return driver,
            Err(e) if e.to_string().contains("another worker") && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("worker did not start: {e}"),
        }
    }
}

async fn send_counts(driver: &TestDriver, events: &Topic<String, u32>, keys: usize, rounds: usize) {
    for round in 0..rounds {
        for k in 0..keys {
            // Not awaited one by one: the acknowledgements come in batches.
            let _ = events.send(&format!("key-{k}"), &1).await.unwrap();
        }
        let _ = round;
    }
    driver.app_ref().flush(WAIT).await.unwrap();
}

async fn wait_for_writes(driver: &TestDriver, counts: &Table<String, u64>, writes: u64) {
    wait_for_writes_within(driver, counts, writes, WAIT).await;
}

async fn wait_for_writes_within(driver: &TestDriver, counts: &Table<String, u64>, writes: u64, within: Duration) {
    driver
        .wait_until(within, async |_| Ok(counts.stats().writes.load(std::sync::atomic::Ordering::Relaxed) >= writes))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "table writes: {} of {writes}: {e}",
                counts.stats().writes.load(std::sync::atomic::Ordering::Relaxed)
            )
        });
}

/// Commits (and checkpoints) until the group's position is the end of `events`.
async fn commit_to_the_end(driver: &TestDriver) {
    driver
        .wait_until(WAIT * 4, async |d| Ok(d.worker().unwrap().commit_now().await && d.caught_up("events").await?))
        .await
        .unwrap();
}

fn replayed(counts: &Table<String, u64>) -> u64 {
    counts.stats().replayed.load(std::sync::atomic::Ordering::Relaxed)
}

fn local(counts: &Table<String, u64>) -> BTreeMap<String, u64> {
    counts.local_entries().unwrap().into_iter().collect()
}

/// Asserts two tables are equal, showing only (some of) their differences.
#[track_caller]
fn assert_same(left: &BTreeMap<String, u64>, right: &BTreeMap<String, u64>, what: &str) {
    let diff: Vec<_> = left
        .keys()
        .chain(right.keys())
        .filter(|k| left.get(*k) != right.get(*k))
        .take(10)
        .map(|k| format!("{k}: {:?} vs {:?}", left.get(k), right.get(k)))
        .collect();
    assert!(diff.is_empty(), "{what}: {} vs {} keys; differences: {diff:?}", left.len(), right.len());
}

/// The last value of each key in the table's changelog.
async fn changelog(driver: &TestDriver, app: &App) -> BTreeMap<String, u64> {
    let mut last: HashMap<Bytes, Option<Bytes>> = HashMap::new();
    for m in driver.messages(&format!("{}-counts-changelog", app.id())).await.unwrap() {
        last.insert(m.key.unwrap(), m.value);
    }
    last.into_iter()
        .filter_map(|(k, v)| {
            let v = v?;
            Some((String::from_utf8(k.to_vec()).unwrap(), serde_json::from_slice(&v).unwrap()))
        })
        .collect()
}

async fn counts_survive_a_restart_and_agree_with_the_changelog(env: Env) {
    let dir = tempfile::tempdir().unwrap();
    let (app, events, counts) = counting(builder(&env, dir.path()));
    let driver = start(&app).await;
    send_counts(&driver, &events, 50, 20).await;
    wait_for_writes(&driver, &counts, 1000).await;
    let truth: BTreeMap<String, u64> = (0..50).map(|k| (format!("key-{k}"), 20)).collect();
    assert_same(&local(&counts), &truth, "first run");
    assert_eq!(counts.local_partitions(), vec![0, 1, 2, 3]);
    driver.stop().await.unwrap();

    // A clean stop checkpointed everything: the restart replays nothing.
    let (app, events, counts) = counting(Env::same_as(&app).state_dir(dir.path()));
    let driver = start(&app).await;
    assert_eq!(replayed(&counts), 0, "a clean restart replays no changelog");
    assert_same(&local(&counts), &truth, "restarted");
    send_counts(&driver, &events, 50, 2).await;
    wait_for_writes(&driver, &counts, 100).await;
    let truth: BTreeMap<String, u64> = (0..50).map(|k| (format!("key-{k}"), 22)).collect();
    assert_same(&local(&counts), &truth, "second run");
    driver.wait_until(WAIT, async |d| d.caught_up("events").await).await.unwrap();
    assert_same(&changelog(&driver, &app).await, &truth, "the changelog");
    let metrics = app.metrics().encode();
    assert!(metrics.contains("strom_table_changelog_writes_total{table=\"counts\"} 100"), "{metrics}");
    assert!(metrics.contains("strom_table_partitions{table=\"counts\"} 4"), "{metrics}");
    driver.stop().await.unwrap();
}

async fn a_crash_replays_only_the_changelog_tail(env: Env) {
    let dir = tempfile::tempdir().unwrap();
    // No periodic commits: checkpoints happen exactly when the test asks. And
    // on Kafka, batches of changelog records, not one request per record.
    let slow = |b: AppBuilder| b.commit_interval(Duration::from_secs(3600)).kafka("linger.ms", "20");
    let (app, events, counts) = counting(slow(builder(&env, dir.path())));
    let mut driver = start(&app).await;
    // 100 events of 10,000 keys each: a table of 1,000,000 keys.
    for k in 0..100 {
        events.send(&format!("key-{k}"), &10_000).await.unwrap();
    }
    // A million changelog records take a while on a debug build and a small broker.
    let started = std::time::Instant::now();
    wait_for_writes_within(&driver, &counts, 1_000_000, Duration::from_secs(400)).await;
    eprintln!("1,000,000 table writes queued in {:?}", started.elapsed());
    commit_to_the_end(&driver).await;
    eprintln!("... acknowledged, committed and checkpointed in {:?}", started.elapsed());
    // The tail: 30 more updates after the checkpoint, on the broker, then a crash.
    send_counts(&driver, &events, 10, 3).await;
    wait_for_writes(&driver, &counts, 1_000_030).await;
    app.flush(WAIT).await.unwrap();
    let before = local(&counts);
    assert_eq!(before.len(), 1_000_000);
    driver.crash();

    let (app, _events, counts) = counting(slow(Env::same_as(&app).state_dir(dir.path())));
    let driver = start(&app).await;
    assert_eq!(replayed(&counts), 30, "only the changelog after the checkpoint is replayed");
    // The 30 events after the last commit are handled again (at least once):
    // each of their keys counts 3 more.
    commit_to_the_end(&driver).await;
    let mut expected = before;
    for k in 0..10 {
        *expected.get_mut(&format!("key-{k}")).unwrap() += 3;
    }
    assert_same(&local(&counts), &expected, "after the crash");
    driver.stop().await.unwrap();
}

async fn a_lost_state_directory_is_rebuilt_from_the_changelog(env: Env) {
    let dir = tempfile::tempdir().unwrap();
    let (app, events, counts) = counting(builder(&env, dir.path()));
    let driver = start(&app).await;
    send_counts(&driver, &events, 40, 5).await;
    events.send(&"big".to_owned(), &1000).await.unwrap();
    wait_for_writes(&driver, &counts, 200 + 1000).await;
    let before = local(&counts);
    driver.stop().await.unwrap();

    std::fs::remove_dir_all(dir.path()).unwrap();
    let (app, _events, counts) = counting(Env::same_as(&app).state_dir(dir.path()));
    let driver = start(&app).await;
    assert_eq!(replayed(&counts), 1200, "the whole changelog is replayed");
    assert_same(&local(&counts), &before, "rebuilt");
    driver.stop().await.unwrap();
}

async fn a_table_with_another_partition_count_than_its_topic_is_refused(env: Env) {
    let dir = tempfile::tempdir().unwrap();
    let app = builder(&env, dir.path()).build().unwrap();
    let events = app.topic::<String, u32>("events").partitions(4);
    let _counts = app.table::<String, u64>("counts", &events).partitions(8);
    app.agent("count", &events, |mut events| async move {
        while events.next().await.is_some() {}
        Ok(())
    });
    let e = app.start().await.unwrap_err();
    assert!(e.to_string().contains("table counts: declared with 8 partitions, but its topic"), "{e}");
}

async fn a_global_table_is_whole_on_every_worker_before_its_agents_start(env: Env) {
    let dir = tempfile::tempdir().unwrap();
    let global = |b: AppBuilder| {
        let app = b.build().unwrap();
        let names = app.global_table::<String, String>("names").partitions(3);
        let events = app.topic::<String, u32>("events").partitions(4);
        let named = app.topic::<String, String>("named").partitions(4);
        let (table, out) = (names.clone(), named.clone());
        app.agent("name", &events, move |mut events| {
            let (names, out) = (table.clone(), out.clone());
            async move {
                while let Some(e) = events.next().await {
                    let Some(key) = e.key() else { continue };
                    let name = names.get(key)?.unwrap_or_else(|| "?".into());
                    out.send(key, &name).await?;
                }
                Ok(())
            }
        });
        (app, names, events, named)
    };
    let (app, names, events, named) = global(builder(&env, dir.path()));
    let driver = start(&app).await;
    for i in 0..30 {
        names.insert(&format!("key-{i}"), &format!("name-{i}")).await.unwrap().await.unwrap();
    }
    names.remove(&"key-29".to_owned()).await.unwrap().await.unwrap();
    driver.wait_until(WAIT, async |_| Ok(names.entries()?.len() == 29)).await.unwrap();
    for i in 0..30 {
        events.send(&format!("key-{i}"), &1).await.unwrap();
    }
    let out = driver.read(&named, 30, WAIT).await.unwrap();
    for e in &out {
        let i: usize = e.key().unwrap()["key-".len()..].parse().unwrap();
        assert_eq!(e.value(), &if i == 29 { "?".to_owned() } else { format!("name-{i}") });
    }
    driver.stop().await.unwrap();

    // Another worker, with a state directory of its own: whole at start.
    let other = tempfile::tempdir().unwrap();
    let (app, names, _, _) = global(Env::same_as(&app).state_dir(other.path()));
    let driver = start(&app).await;
    let entries: BTreeMap<String, String> = names.entries().unwrap().into_iter().collect();
    assert_eq!(entries.len(), 29);
    assert_eq!(entries.get("key-7").map(String::as_str), Some("name-7"));
    driver.stop().await.unwrap();
}

/// A global table read from a topic of the app's own: each key at the version
/// its keep rule prefers (a stale version arriving later is not kept), its
/// changes streamed to subscribers, and a worker started later whole at start.
async fn a_global_table_read_from_a_topic_keeps_the_newest_version(env: Env) {
    let dir = tempfile::tempdir().unwrap();
    let rev = |v: &serde_json::Value| v["rev"].as_u64().unwrap_or(0);
    let declare = |b: AppBuilder| {
        let app = b.build().unwrap();
        let revisions = app.topic::<String, serde_json::Value>("revisions").partitions(3);
        let latest = app
            .global_table_from("latest", &revisions)
            .keep_if(move |incoming: &serde_json::Value, stored: &serde_json::Value| rev(incoming) > rev(stored));
        (app, revisions, latest)
    };
    let (app, revisions, latest) = declare(builder(&env, dir.path()));
    let driver = start(&app).await;
    let mut changes = latest.changes();
    let send = async |key: &str, r: u64| {
        revisions.send(&key.to_owned(), &serde_json::json!({"rev": r})).await.unwrap().await.unwrap();
    };
    for (key, r) in [("a", 1), ("b", 1), ("a", 3), ("a", 2), ("b", 2), ("c", 5)] {
        send(key, r).await;
    }
    let held = |table: &GlobalTable<String, serde_json::Value>| -> BTreeMap<String, u64> {
        table.entries().unwrap().into_iter().map(|(k, v)| (k, rev(&v))).collect()
    };
    let expected: BTreeMap<String, u64> = [("a", 3), ("b", 2), ("c", 5)].map(|(k, r)| (k.to_owned(), r)).into();
    driver.wait_until(WAIT, async |_| Ok(held(&latest) == expected)).await.unwrap();
    assert_eq!(latest.table().stats().not_kept.load(std::sync::atomic::Ordering::Relaxed), 1, "a@2 came after a@3");
    // The changes, as applied: a ends at 3 and never goes back to 2.
    let mut last = BTreeMap::new();
    while last != expected {
        let change = tokio::time::timeout(WAIT, changes.next()).await.unwrap().unwrap();
        let Change::Set(key, value) = change else { panic!("unexpected {change:?}") };
        assert!(!(key == "a" && rev(&value) == 2), "the stale version was streamed");
        last.insert(key, rev(&value));
    }
    driver.stop().await.unwrap();

    // A worker started later, with a state directory of its own, is whole at
    // start and keeps the rule over the whole topic.
    let other = tempfile::tempdir().unwrap();
    let (app, _, latest) = declare(Env::same_as(&app).state_dir(other.path()));
    let driver = start(&app).await;
    assert_eq!(held(&latest), expected);
    driver.stop().await.unwrap();
}

/// Two workers of one group, each following the other's partitions: when one
/// stops, the survivor serves its partitions without replaying their changelog.
#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_without_replaying_the_changelog() {
    let env = Env::kafka();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let standby = |b: AppBuilder| {
        let (app, events, counts) = counting(b);
        (app, events, counts.standby_replicas(1))
    };
    let (app_a, events, counts_a) = standby(builder(&env, dir_a.path()));
    let driver_a = start(&app_a).await;
    let (app_b, _, counts_b) = standby(Env::same_as(&app_a).state_dir(dir_b.path()));
    let driver_b = start(&app_b).await;
    driver_b
        .wait_until(WAIT, async |_| {
            let (a, b) = (counts_a.local_partitions(), counts_b.local_partitions());
            Ok(!a.is_empty() && !b.is_empty() && a.len() + b.len() == 4)
        })
        .await
        .unwrap();
    send_counts(&driver_a, &events, 40, 25).await;
    let writes = |t: &Table<String, u64>| t.stats().writes.load(std::sync::atomic::Ordering::Relaxed);
    driver_a.wait_until(WAIT, async |_| Ok(writes(&counts_a) + writes(&counts_b) == 1000)).await.unwrap();
    // B's standbys follow A's partitions to the end.
    let applied = |t: &Table<String, u64>| t.stats().standby_applied.load(std::sync::atomic::Ordering::Relaxed);
    driver_b.wait_until(WAIT, async |_| Ok(applied(&counts_b) >= writes(&counts_a))).await.unwrap();
    assert!(writes(&counts_a) > 0, "A counted some keys");
    let replayed_before = replayed(&counts_b);
    driver_a.stop().await.unwrap();
    driver_b.wait_until(WAIT, async |_| Ok(counts_b.local_partitions().len() == 4)).await.unwrap();
    assert_eq!(replayed(&counts_b) - replayed_before, 0, "the takeover replays no changelog: the standby had it");
    let truth: BTreeMap<String, u64> = (0..40).map(|k| (format!("key-{k}"), 25)).collect();
    assert_same(&local(&counts_b), &truth, "the survivor");
    driver_b.stop().await.unwrap();
}

on_every_transport!(
    a_global_table_is_whole_on_every_worker_before_its_agents_start,
    a_global_table_read_from_a_topic_keeps_the_newest_version,
    counts_survive_a_restart_and_agree_with_the_changelog,
    a_crash_replays_only_the_changelog_tail,
    a_lost_state_directory_is_rebuilt_from_the_changelog,
    a_table_with_another_partition_count_than_its_topic_is_refused,
);
