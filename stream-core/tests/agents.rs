//! Agents on the memory transport: flow, ordering, batching, repartitioning,
//! commits and shutdown.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use stream_core::prelude::*;
use stream_core::testing::TestDriver;

mod common;
use common::{Env, WAIT};

async fn a_map_agent_relays_every_event_once_and_commits_to_the_end(env: Env) {
    let app = env.app("map");
    let input = app.topic::<String, Value>("in").partitions(4);
    let output = app.topic::<String, Value>("out").partitions(4);
    let out = output.clone();
    app.agent("double", &input, move |events| {
        let out = out.clone();
        async move {
            let mut doubled = events.map(|v: Value| json!({"n": v["n"].as_i64().unwrap_or(0) * 2}));
            while let Some(event) = doubled.next().await {
                out.send(event.key(), event.value()).await?;
            }
            Ok(())
        }
    });
    let driver = TestDriver::start(&app).await.unwrap();
    for i in 0..1000 {
        driver.send(&input, Some(&format!("k{}", i % 7)), &json!({"n": i})).await.unwrap();
    }
    let got = driver.read(&output, 1000, WAIT).await.unwrap();
    let mut values: Vec<i64> = got.iter().map(|e| e.value()["n"].as_i64().unwrap()).collect();
    values.sort_unstable();
    assert_eq!(values, (0..1000).map(|i| i * 2).collect::<Vec<_>>());
    // Keys are kept, so each key's events stay on one output partition.
    let mut partitions: HashMap<String, i32> = HashMap::new();
    for e in &got {
        let p = *partitions.entry(e.key().unwrap().clone()).or_insert(e.partition());
        assert_eq!(p, e.partition());
    }
    driver.wait_until(WAIT, async |d| d.caught_up("in").await).await.expect("committed offsets reach the end offsets");
    driver.stop().await.unwrap();
}

async fn concurrency_never_reorders_events_of_one_key(env: Env) {
    let app = env.app("conc");
    let input = app.topic::<String, u64>("in").partitions(2);
    let seen: Arc<Mutex<HashMap<String, Vec<u64>>>> = Arc::default();
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (seen2, running2, most2) = (seen.clone(), running.clone(), most.clone());
    app.agent("slow", &input, move |mut events| {
        let (seen, running, most) = (seen2.clone(), running2.clone(), most2.clone());
        async move {
            while let Some(event) = events.next().await {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                // Uneven work, so instances race each other.
                tokio::time::sleep(Duration::from_micros(50 * (event.value() % 5))).await;
                seen.lock().unwrap().entry(event.key().unwrap().clone()).or_default().push(*event.value());
                running.fetch_sub(1, Ordering::SeqCst);
            }
            Ok(())
        }
    })
    .concurrency(4);
    let driver = TestDriver::start(&app).await.unwrap();
    for i in 0..400u64 {
        driver.send(&input, Some(&format!("key-{}", i % 10)), &i).await.unwrap();
    }
    driver
        .wait_until(WAIT, async |_| Ok(seen.lock().unwrap().values().map(Vec::len).sum::<usize>() == 400))
        .await
        .unwrap();
    for (key, values) in seen.lock().unwrap().iter() {
        let mut sorted = values.clone();
        sorted.sort_unstable();
        assert_eq!(values, &sorted, "events of {key} were reordered");
        assert_eq!(values.len(), 40);
    }
    assert!(most.load(Ordering::SeqCst) > 1, "instances ran concurrently");
    driver.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn take_batches_by_count_or_time_whichever_first() {
    let app = TestDriver::app("take");
    let input = app.topic::<(), u32>("in");
    type Seen = Arc<Mutex<Vec<(Vec<u32>, tokio::time::Instant)>>>;
    let batches: Seen = Arc::default();
    let b2 = batches.clone();
    app.agent("batcher", &input, move |events| {
        let batches = b2.clone();
        async move {
            let mut batched = events.take(5, Duration::from_secs(2));
            while let Some(batch) = batched.next().await {
                let values = batch.iter().map(|e| *e.value()).collect();
                batches.lock().unwrap().push((values, tokio::time::Instant::now()));
            }
            Ok(())
        }
    });
    let driver = TestDriver::start(&app).await.unwrap();
    // Twelve at once: two full batches by count, then two stragglers by time.
    let sent_at = tokio::time::Instant::now();
    for i in 0..12 {
        driver.send(&input, None, &i).await.unwrap();
    }
    driver.wait_until(WAIT, async |_| Ok(batches.lock().unwrap().len() == 3)).await.unwrap();
    {
        let b = batches.lock().unwrap();
        assert_eq!(b[0].0, vec![0, 1, 2, 3, 4]);
        assert_eq!(b[1].0, vec![5, 6, 7, 8, 9]);
        assert_eq!(b[2].0, vec![10, 11]);
        assert!(b[1].1 - sent_at < Duration::from_millis(500), "full batches do not wait");
        let waited = b[2].1 - sent_at;
        assert!(waited >= Duration::from_secs(2) && waited < Duration::from_millis(2500), "waited {waited:?}");
    }
    // All twelve are committed only after their batches were handled.
    driver.wait_until(WAIT, async |d| Ok(d.committed("in", 0).await? == Some(12))).await.unwrap();
    driver.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn take_ready_batches_what_has_arrived_without_waiting() {
    let app = TestDriver::app("take-ready");
    let input = app.topic::<(), u32>("in");
    let batches: Arc<Mutex<Vec<Vec<u32>>>> = Arc::default();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (b2, g2) = (batches.clone(), gate.clone());
    app.agent("writer", &input, move |events| {
        let (batches, gate) = (b2.clone(), g2.clone());
        async move {
            let mut batched = events.take_ready(5);
            while let Some(batch) = batched.next().await {
                batches.lock().unwrap().push(batch.iter().map(|e| *e.value()).collect());
                // A slow write: events arrive meanwhile.
                gate.acquire().await?.forget();
            }
            Ok(())
        }
    });
    let driver = TestDriver::start(&app).await.unwrap();
    let sent_at = tokio::time::Instant::now();
    driver.send(&input, None, &0).await.unwrap();
    driver.wait_until(WAIT, async |_| Ok(batches.lock().unwrap().len() == 1)).await.unwrap();
    assert!(tokio::time::Instant::now() - sent_at < Duration::from_millis(100), "a lone event does not wait");
    for i in 1..12 {
        driver.send(&input, None, &i).await.unwrap();
    }
    // All eleven reach the agent while it writes its first batch (the
    // paused clock moves on only when nothing else can run).
    tokio::time::sleep(Duration::from_secs(1)).await;
    gate.add_permits(10);
    driver.wait_until(WAIT, async |_| Ok(batches.lock().unwrap().len() == 4)).await.unwrap();
    assert_eq!(*batches.lock().unwrap(), vec![vec![0], vec![1, 2, 3, 4, 5], vec![6, 7, 8, 9, 10], vec![11]]);
    driver.wait_until(WAIT, async |d| Ok(d.committed("in", 0).await? == Some(12))).await.unwrap();
    driver.stop().await.unwrap();
}

async fn group_by_repartitions_by_the_new_key(env: Env) {
    let app = env.app("groupby");
    let lines = app.topic::<(), String>("lines").partitions(3);
    let by_word = app.topic::<String, String>("lines-by-word").partitions(4);
    let seen: Arc<Mutex<Vec<(String, String, i32)>>> = Arc::default();
    let s2 = seen.clone();
    let stage = by_word.clone();
    app.agent("words", &lines, move |lines| {
        let (seen, stage) = (s2.clone(), stage.clone());
        async move {
            let mut words = lines.group_by(|e| e.value().split('-').next().unwrap_or("").to_owned(), &stage);
            while let Some(word) = words.next().await {
                assert_eq!(word.topic(), stage.name());
                seen.lock().unwrap().push((word.key().unwrap().clone(), word.value().clone(), word.partition()));
            }
            Ok(())
        }
    });
    let driver = TestDriver::start(&app).await.unwrap();
    for i in 0..90 {
        driver.send(&lines, None, &format!("{}-{i}", ["apple", "pear", "fig"][i % 3])).await.unwrap();
    }
    driver.wait_until(WAIT, async |_| Ok(seen.lock().unwrap().len() == 90)).await.unwrap();
    let mut partition_of: HashMap<String, i32> = HashMap::new();
    for (key, value, partition) in seen.lock().unwrap().iter() {
        assert!(value.starts_with(key.as_str()));
        assert_eq!(*partition_of.entry(key.clone()).or_insert(*partition), *partition, "{key} on one partition");
    }
    assert_eq!(partition_of.len(), 3);
    // Both the source and the repartition topic are committed to their ends.
    driver
        .wait_until(WAIT, async |d| Ok(d.caught_up("lines").await? && d.caught_up("lines-by-word").await?))
        .await
        .unwrap();
    driver.stop().await.unwrap();
}

async fn through_and_sink_forward_with_keys(env: Env) {
    let app = env.app("through");
    let input = app.topic::<String, u32>("in");
    let middle = app.topic::<String, u32>("middle").partitions(2);
    let output = app.topic::<String, u32>("out");
    let (m, o) = (middle.clone(), output.clone());
    app.agent("pipe", &input, move |events| {
        let (m, o) = (m.clone(), o.clone());
        async move { events.through(&m).filter(|e| e.value() % 2 == 0).sink(&o).await }
    });
    let driver = TestDriver::start(&app).await.unwrap();
    for i in 0..20u32 {
        driver.send(&input, Some(&format!("k{i}")), &i).await.unwrap();
    }
    let got = driver.read(&output, 10, WAIT).await.unwrap();
    let mut values: Vec<(String, u32)> = got.iter().map(|e| (e.key().unwrap().clone(), *e.value())).collect();
    values.sort();
    let mut expected: Vec<(String, u32)> = (0..20).filter(|i| i % 2 == 0).map(|i| (format!("k{i}"), i)).collect();
    expected.sort();
    assert_eq!(values, expected);
    assert_eq!(driver.messages("middle").await.unwrap().len(), 20);
    driver.stop().await.unwrap();
}

async fn enumerate_and_std_stream_combinators_work(env: Env) {
    let app = env.app("enumerate");
    let input = app.topic::<(), String>("in");
    let seen: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
    let s2 = seen.clone();
    app.agent("count", &input, move |events| {
        let seen = s2.clone();
        async move {
            let mut numbered = events.enumerate();
            while let Some((i, event)) = numbered.next().await {
                seen.lock().unwrap().push((i, event.value().clone()));
            }
            Ok(())
        }
    });
    let driver = TestDriver::start(&app).await.unwrap();
    for word in ["a", "b", "c"] {
        driver.send(&input, None, &word.to_owned()).await.unwrap();
    }
    driver.wait_until(WAIT, async |_| Ok(seen.lock().unwrap().len() == 3)).await.unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![(0, "a".into()), (1, "b".into()), (2, "c".into())]);
    driver.stop().await.unwrap();
}

async fn shutdown_finishes_in_flight_events_and_a_restart_resumes_without_duplicates(env: Env) {
    let first = env.app("shutdown");
    let build = || {
        let app = Env::same_as(&first).commit_interval(Duration::from_secs(3600)).build().unwrap();
        let input = app.topic::<(), u32>("in").partitions(2);
        let output = app.topic::<(), u32>("out");
        let out = output.clone();
        app.agent("slow-copy", &input, move |mut events| {
            let out = out.clone();
            async move {
                while let Some(event) = events.next().await {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    out.send(None, event.value()).await?;
                }
                Ok(())
            }
        });
        (app, input, output)
    };
    let (app, input, _) = build();
    let mut driver = TestDriver::start(&app).await.unwrap();
    for i in 0..200 {
        driver.send(&input, None, &i).await.unwrap();
    }
    // Stop while events are in flight: what was handed to the agent is finished and committed.
    tokio::time::sleep(Duration::from_millis(20)).await;
    driver.stop_worker().await.unwrap();
    let out_after_stop = driver.messages("out").await.unwrap().len();
    let mut committed = 0;
    for p in 0..2 {
        committed += driver.committed("in", p).await.unwrap().unwrap_or(0);
    }
    assert_eq!(committed as usize, out_after_stop, "every committed input has its output, and only those");
    drop(driver);
    drop(app);

    // A new worker of the same app continues where the first one committed.
    let (app, _input, output) = build();
    let driver = TestDriver::start(&app).await.unwrap();
    let all = driver.read(&output, 200, WAIT).await.unwrap();
    let mut values: Vec<u32> = all.iter().map(|e| *e.value()).collect();
    values.sort_unstable();
    assert_eq!(values, (0..200).collect::<Vec<_>>(), "every input exactly once across the restart");
    driver.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn timers_and_crontabs_run_with_the_worker() {
    let app = TestDriver::app("timers");
    let ticks = Arc::new(AtomicUsize::new(0));
    let crons = Arc::new(AtomicUsize::new(0));
    let (t, c) = (ticks.clone(), crons.clone());
    app.timer("tick", Duration::from_secs(1), move || {
        let t = t.clone();
        async move {
            t.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    });
    app.crontab("every-second", "* * * * * *", move || {
        let c = c.clone();
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    })
    .unwrap();
    let driver = TestDriver::start(&app).await.unwrap();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(ticks.load(Ordering::SeqCst) >= 3);
    assert!(crons.load(Ordering::SeqCst) >= 2);
    driver.stop().await.unwrap();
    let after = ticks.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(ticks.load(Ordering::SeqCst), after, "timers stop with the worker");
}

async fn duplicate_agent_names_and_conflicting_topics_are_reported(env: Env) {
    let app = env.app("dups");
    let input = app.topic::<(), u32>("in");
    app.agent("a", &input, |_events| async { Ok(()) });
    app.agent("a", &input, |_events| async { Ok(()) });
    let err = app.start().await.unwrap_err();
    assert!(err.to_string().contains("two agents are named \"a\""), "{err}");

    // A topic that exists with another partition count is reported, not used.
    let first = env.app("conflict");
    first.topic::<(), u32>("in").partitions(2);
    first.start().await.unwrap().stop().await.unwrap();
    let app = Env::same_as(&first).build().unwrap();
    let input = app.topic::<(), u32>("in").partitions(4);
    app.agent("a", &input, |_events| async { Ok(()) });
    let err = app.start().await.unwrap_err();
    let name = app.config().topic_name("in");
    assert_eq!(err.to_string(), format!("topic {name}: exists with 2 partitions, declared with 4"));
}

on_every_transport!(
    a_map_agent_relays_every_event_once_and_commits_to_the_end,
    concurrency_never_reorders_events_of_one_key,
    group_by_repartitions_by_the_new_key,
    through_and_sink_forward_with_keys,
    enumerate_and_std_stream_combinators_work,
    shutdown_finishes_in_flight_events_and_a_restart_resumes_without_duplicates,
    duplicate_agent_names_and_conflicting_topics_are_reported,
);
