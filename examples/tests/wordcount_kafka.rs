//! `wordcount` as an operator runs it: worker processes on a real
//! Kafka-protocol broker with their table in a state directory, fed and
//! checked from outside, and killed mid-stream.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use stream_core::App;
use stream_core::table::store::{SledStore, Store};
use stream_core::testing::TestDriver;
use strom_examples::wordcount::WordCount;

mod common;
use common::{Process, WAIT, kafka_url};

/// A word count deployment: its topics under a prefix of its own, and the
/// state directory of its worker.
struct Deployment {
    app: App,
    driver: TestDriver,
    state: tempfile::TempDir,
}

impl Deployment {
    fn new() -> Deployment {
        // The observer's app id is the worker's, so `committed` reads its group.
        let app = TestDriver::app_on(&kafka_url(), "wordcount");
        app.topic::<Bytes, String>("words.in").partitions(4);
        app.topic::<String, WordCount>("words.out").partitions(4);
        let driver = TestDriver::observe(&app);
        Deployment { app, driver, state: tempfile::tempdir().unwrap() }
    }

    fn worker(&self, extra: &[(&str, &str)]) -> Process {
        let dir = self.state.path().to_string_lossy().into_owned();
        let mut env = vec![("STROM_STATE_DIR", dir.as_str())];
        env.extend_from_slice(extra);
        Process::start(env!("CARGO_BIN_EXE_wordcount"), &self.app, &env)
    }

    /// Sends lines `range` (not waiting for each acknowledgement) and adds
    /// their words to `truth`.
    async fn send(&self, range: std::ops::Range<u32>, truth: &mut BTreeMap<String, u64>) {
        let input = self.app.topic::<Bytes, String>("words.in");
        let mut receipts = Vec::new();
        for i in range {
            let line = format!("w{} W{}  x{}\tw{}", i % 97, (i * 7) % 31, i % 5, i % 3);
            for word in line.to_lowercase().split_whitespace() {
                *truth.entry(word.to_owned()).or_default() += 1;
            }
            receipts.push(input.send(&Bytes::from(format!("line-{i}")), &line).await.unwrap());
        }
        for r in receipts {
            r.await.unwrap();
        }
    }

    /// Both the input and the repartition topic are consumed and committed to their ends.
    async fn caught_up(&self) -> bool {
        self.driver
            .wait_until(WAIT, async |d| Ok(d.caught_up("words.in").await? && d.caught_up("words.by-word").await?))
            .await
            .is_ok()
    }

    /// The last value of each word in the changelog.
    async fn changelog(&self) -> BTreeMap<String, u64> {
        let mut last: HashMap<Bytes, Option<Bytes>> = HashMap::new();
        for m in self.driver.messages("wordcount-counts-changelog").await.unwrap() {
            last.insert(m.key.unwrap(), m.value);
        }
        decode(last.into_iter().filter_map(|(k, v)| Some((k, v?))))
    }

    /// The worker's table as its store holds it (read once the worker exited).
    fn store(&self) -> BTreeMap<String, u64> {
        let store = SledStore::open(self.state.path()).unwrap();
        let mut all = Vec::new();
        for p in 0..4 {
            all.extend(store.partition("counts", p).unwrap().entries().unwrap());
        }
        decode(all.into_iter())
    }

    /// The last count of each word in `words.out`.
    async fn output(&self) -> BTreeMap<String, u64> {
        let mut last = BTreeMap::new();
        for m in self.driver.messages("words.out").await.unwrap() {
            let wc: WordCount = serde_json::from_slice(m.value.as_deref().unwrap()).unwrap();
            assert_eq!(m.key.as_deref(), Some(wc.word.as_bytes()), "keyed by the word");
            let n = last.entry(wc.word).or_insert(0);
            *n = wc.count.max(*n);
        }
        last
    }
}

fn decode(entries: impl Iterator<Item = (Bytes, Bytes)>) -> BTreeMap<String, u64> {
    entries.map(|(k, v)| (String::from_utf8(k.to_vec()).unwrap(), serde_json::from_slice::<u64>(&v).unwrap())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_are_exact_without_failures_and_every_update_is_emitted() {
    let d = Deployment::new();
    let worker = d.worker(&[]);
    worker.wait_ready().await;
    let mut truth = BTreeMap::new();
    d.send(0..2_000, &mut truth).await;
    assert!(d.caught_up().await, "the worker consumed its input: {}", worker.log());
    let (code, _, log) = worker.terminate().await;
    assert_eq!(code, 0, "{log}");
    assert_eq!(d.store(), truth, "the table holds the true counts");
    assert_eq!(d.changelog().await, truth, "the changelog agrees with the store");
    assert_eq!(d.output().await, truth, "words.out carries every update");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_stream_loses_no_update_and_its_changelog_agrees_with_the_store() {
    let d = Deployment::new();
    // A short session, so the group forgets the killed member soon.
    let settings = [("STROM_KAFKA_SESSION_TIMEOUT_MS", "6000"), ("STROM_KAFKA_HEARTBEAT_INTERVAL_MS", "500")];
    let worker = d.worker(&settings);
    worker.wait_ready().await;
    let mut truth = BTreeMap::new();
    d.send(0..3_000, &mut truth).await;
    let deadline = Instant::now() + WAIT;
    while worker.metric("strom_table_changelog_writes_total") < 2_000.0 {
        assert!(Instant::now() < deadline, "no progress: {}", worker.log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    worker.kill();
    d.send(3_000..4_000, &mut truth).await;
    // Restart after the killed member's session expired (a Tansu quirk: see ARCHITECTURE.md).
    tokio::time::sleep(Duration::from_secs(7)).await;
    let worker = d.worker(&settings);
    worker.wait_ready().await;
    assert!(d.caught_up().await, "the restarted worker consumed the rest: {}", worker.log());
    let (code, _, log) = worker.terminate().await;
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("table partition recovered"), "{log}");
    let store = d.store();
    let lost: Vec<_> = truth.iter().filter(|(w, n)| store.get(*w).is_none_or(|s| s < n)).take(10).collect();
    assert!(lost.is_empty(), "no update is lost (counts at least the truth), but: {lost:?}");
    assert_eq!(store.len(), truth.len());
    assert_eq!(d.changelog().await, store, "the changelog agrees with the store");
}
