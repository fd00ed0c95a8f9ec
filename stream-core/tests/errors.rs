//! Bad input and failing handlers: dead letters, retries, stopping.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use stream_core::prelude::*;
use stream_core::testing::TestDriver;
use stream_core::{Error, ValidationError};

mod common;
use common::{Env, WAIT};

/// A hand-validated payload (the derive is tested in stream-macros).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Reading {
    sensor: u32,
    celsius: f64,
}

impl Payload for Reading {
    type Codec = stream_core::codec::Json;

    fn validate(&self) -> Result<(), ValidationError> {
        if (-90.0..=60.0).contains(&self.celsius) {
            Ok(())
        } else {
            Err(ValidationError::new("Reading", "celsius", format!("{} is not a temperature on Earth", self.celsius)))
        }
    }
}

async fn undecodable_and_invalid_input_goes_to_the_dlq_with_reasons_and_good_input_flows_on(env: Env) {
    let app = env.app("dlq");
    let input = app.topic::<String, Reading>("readings").partitions(2);
    let output = app.topic::<String, Reading>("ok");
    let out = output.clone();
    app.agent("check", &input, move |mut events| {
        let out = out.clone();
        async move {
            while let Some(e) = events.next().await {
                out.send(e.key(), e.value()).await?;
            }
            Ok(())
        }
    });
    let driver = TestDriver::start(&app).await.unwrap();
    driver.send_raw("readings", Some(b"s1"), br#"{"sensor": 1, "celsius": 20.5}"#).await.unwrap();
    driver.send_raw("readings", Some(b"s1"), b"not json at all").await.unwrap();
    driver.send_raw("readings", Some(b"s2"), br#"{"sensor": 2, "celsius": 500.0}"#).await.unwrap();
    driver.send_raw("readings", Some(b"s2"), br#"{"sensor": 2}"#).await.unwrap();
    driver.send_raw("readings", Some(&[0xff, 0xfe]), br#"{"sensor": 3, "celsius": 1.0}"#).await.unwrap();
    driver.send_raw("readings", Some(b"s2"), br#"{"sensor": 2, "celsius": -3.0}"#).await.unwrap();

    let good = driver.read(&output, 2, WAIT).await.unwrap();
    let mut sensors: Vec<u32> = good.iter().map(|e| e.value().sensor).collect();
    sensors.sort_unstable();
    assert_eq!(sensors, [1, 2]);

    let letters = driver.dead_letters("readings", 4, WAIT).await.unwrap();
    assert_eq!(letters.len(), 4);
    let find = |value: &[u8]| letters.iter().find(|l| l.value.as_deref() == Some(value)).unwrap();
    let not_json = find(b"not json at all");
    assert_eq!(not_json.kind, "decode");
    let readings = driver.topic_name("readings");
    assert!(not_json.error.starts_with(&format!("cannot decode the value of {readings}[")), "{}", not_json.error);
    assert!(not_json.error.contains("json codec: expected ident"), "{}", not_json.error);
    assert_eq!(not_json.source_topic, readings);
    assert_eq!(not_json.agent, "check");
    let hot = find(br#"{"sensor": 2, "celsius": 500.0}"#);
    assert_eq!(hot.kind, "validation");
    assert!(hot.error.contains("celsius: 500 is not a temperature on Earth"), "{}", hot.error);
    let missing = find(br#"{"sensor": 2}"#);
    assert!(missing.error.contains("missing field `celsius`"), "{}", missing.error);
    let bad_key = find(br#"{"sensor": 3, "celsius": 1.0}"#);
    assert!(bad_key.error.contains("cannot decode the key"), "{}", bad_key.error);
    // The headers name the exact origin.
    let originals = driver.messages("readings").await.unwrap();
    for l in &letters {
        let origin = originals.iter().find(|m| m.partition == l.source_partition && m.offset == l.source_offset);
        assert_eq!(origin.unwrap().value, l.value);
    }
    let stats = driver.worker().unwrap().agent_stats("check").unwrap();
    assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 4);
    // Nothing is left uncommitted: bad messages are done once dead-lettered.
    driver.wait_until(WAIT, async |d| d.caught_up("readings").await).await.unwrap();
    driver.stop().await.unwrap();
}

async fn a_failing_handler_is_retried_with_backoff_and_then_succeeds(env: Env) {
    let app = env.app("retry");
    let input = app.topic::<(), u32>("in");
    let attempts = Arc::new(AtomicUsize::new(0));
    let handled: Arc<Mutex<Vec<u32>>> = Arc::default();
    let (a, h) = (attempts.clone(), handled.clone());
    app.agent("flaky", &input, move |mut events| {
        let (attempts, handled) = (a.clone(), h.clone());
        async move {
            while let Some(e) = events.next().await {
                if *e.value() == 3 && attempts.fetch_add(1, Ordering::SeqCst) < 2 {
                    return Err("database unavailable".into());
                }
                handled.lock().unwrap().push(*e.value());
            }
            Ok(())
        }
    })
    .on_error(ErrorPolicy::retry(3).backoff(Duration::from_millis(10), Duration::from_millis(50)));
    let driver = TestDriver::start(&app).await.unwrap();
    for i in 0..6 {
        driver.send(&input, None, &i).await.unwrap();
    }
    driver.wait_until(WAIT, async |_| Ok(handled.lock().unwrap().len() == 6)).await.unwrap();
    assert_eq!(*handled.lock().unwrap(), vec![0, 1, 2, 3, 4, 5], "the failed event is handled again, in order");
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    let stats = driver.worker().unwrap().agent_stats("flaky").unwrap();
    assert_eq!(stats.failed.load(Ordering::Relaxed), 2);
    assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 0);
    assert!(driver.messages("in.dlq").await.unwrap().is_empty());
    driver.stop().await.unwrap();
}

async fn a_handler_failing_beyond_its_retries_dead_letters_the_event_and_goes_on(env: Env) {
    let app = env.app("poison");
    let input = app.topic::<(), u32>("in");
    let handled: Arc<Mutex<Vec<u32>>> = Arc::default();
    let h = handled.clone();
    app.agent("picky", &input, move |mut events| {
        let handled = h.clone();
        async move {
            while let Some(e) = events.next().await {
                if *e.value() == 13 {
                    panic!("unlucky number");
                }
                handled.lock().unwrap().push(*e.value());
            }
            Ok(())
        }
    })
    .on_error(ErrorPolicy::retry(2).backoff(Duration::from_millis(1), Duration::from_millis(5)));
    let driver = TestDriver::start(&app).await.unwrap();
    for i in 10..16 {
        driver.send(&input, None, &i).await.unwrap();
    }
    let letters = driver.dead_letters("in", 1, WAIT).await.unwrap();
    assert_eq!(letters[0].value.as_deref(), Some(&b"13"[..]));
    assert_eq!(letters[0].kind, "handler");
    assert_eq!(letters[0].error, "handler panicked: unlucky number");
    driver.wait_until(WAIT, async |_| Ok(handled.lock().unwrap().len() == 5)).await.unwrap();
    assert_eq!(*handled.lock().unwrap(), vec![10, 11, 12, 14, 15]);
    driver.wait_until(WAIT, async |d| Ok(d.committed("in", 0).await? == Some(6))).await.unwrap();
    driver.stop().await.unwrap();
}

async fn a_rejected_event_is_dead_lettered_at_once_while_other_failures_are_retried(env: Env) {
    let app = env.app("reject");
    let input = app.topic::<(), u32>("in");
    let handled: Arc<Mutex<Vec<u32>>> = Arc::default();
    let flaky_tries = Arc::new(AtomicUsize::new(0));
    let (h, tries) = (handled.clone(), flaky_tries.clone());
    app.agent("strict", &input, move |mut events| {
        let (handled, tries) = (h.clone(), tries.clone());
        async move {
            while let Some(e) = events.next().await {
                let n = *e.value();
                if n % 10 == 3 {
                    return Err(Rejected::new(format!("{n} ends in 3")).into());
                }
                // A failure that goes away: retried, not dead-lettered.
                if n == 5 && tries.fetch_add(1, Ordering::SeqCst) < 2 {
                    return Err("the database is away".into());
                }
                handled.lock().unwrap().push(n);
            }
            Ok(())
        }
    })
    .on_error(ErrorPolicy::retry(5).backoff(Duration::from_millis(1), Duration::from_millis(5)));
    let driver = TestDriver::start(&app).await.unwrap();
    for i in 0..20 {
        driver.send(&input, None, &i).await.unwrap();
    }
    let letters = driver.dead_letters("in", 2, WAIT).await.unwrap();
    let mut rejected: Vec<(String, String)> = letters.iter().map(|l| (l.kind.clone(), l.error.clone())).collect();
    rejected.sort();
    assert_eq!(
        rejected,
        [("rejected".to_owned(), "13 ends in 3".to_owned()), ("rejected".to_owned(), "3 ends in 3".to_owned())]
    );
    driver.wait_until(WAIT, async |d| Ok(d.committed("in", 0).await? == Some(20))).await.unwrap();
    let expected: Vec<u32> = (0..20).filter(|n| n % 10 != 3).collect();
    assert_eq!(*handled.lock().unwrap(), expected);
    let stats = driver.worker().unwrap().agent_stats("strict").unwrap();
    assert_eq!(stats.retried.load(Ordering::Relaxed), 2, "only the passing failure was retried");
    assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 2);
    driver.stop().await.unwrap();
}

async fn a_failed_batch_is_retried_whole(env: Env) {
    let app = env.app("batch-retry");
    let input = app.topic::<(), u32>("in");
    let batches: Arc<Mutex<Vec<Vec<u32>>>> = Arc::default();
    let failed_once = Arc::new(AtomicUsize::new(0));
    let (b, f) = (batches.clone(), failed_once.clone());
    app.agent("batches", &input, move |events| {
        let (batches, failed_once) = (b.clone(), f.clone());
        async move {
            let mut batched = events.take(4, Duration::from_millis(200));
            while let Some(batch) = batched.next().await {
                let values: Vec<u32> = batch.iter().map(|e| *e.value()).collect();
                batches.lock().unwrap().push(values.clone());
                if values.contains(&5) && failed_once.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Err("bulk insert failed".into());
                }
            }
            Ok(())
        }
    })
    .on_error(ErrorPolicy::retry(1).backoff(Duration::from_millis(1), Duration::from_millis(1)));
    let driver = TestDriver::start(&app).await.unwrap();
    for i in 0..8 {
        driver.send(&input, None, &i).await.unwrap();
    }
    driver.wait_until(WAIT, async |d| Ok(d.committed("in", 0).await? == Some(8))).await.unwrap();
    let b = batches.lock().unwrap().clone();
    assert_eq!(b, vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![4, 5, 6, 7]], "the whole failed batch came back");
    driver.stop().await.unwrap();
}

async fn the_stop_policy_stops_the_worker_without_committing_past_the_failure(env: Env) {
    let app = env.app("stop");
    let input = app.topic::<(), u32>("in");
    app.agent("strict", &input, move |mut events| async move {
        while let Some(e) = events.next().await {
            if *e.value() == 2 {
                return Err("cannot continue".into());
            }
        }
        Ok(())
    })
    .on_error(ErrorPolicy::retry(1).backoff(Duration::from_millis(1), Duration::from_millis(1)).then_stop());
    let driver = TestDriver::start(&app).await.unwrap();
    for i in 0..5 {
        driver.send(&input, None, &i).await.unwrap();
    }
    driver
        .wait_until(WAIT, async |d| Ok(d.worker().is_some_and(|w| w.is_stopping())))
        .await
        .expect("the worker stops on its own");
    let mut driver = driver;
    match driver.stop_worker().await {
        Err(Error::AgentStopped { agent, source }) => {
            assert_eq!(agent, "strict");
            assert_eq!(source.to_string(), "cannot continue");
        }
        other => panic!("expected AgentStopped, got {other:?}"),
    }
    assert_eq!(driver.committed("in", 0).await.unwrap(), Some(2), "nothing past the failed event is committed");
}

on_every_transport!(
    undecodable_and_invalid_input_goes_to_the_dlq_with_reasons_and_good_input_flows_on,
    a_failing_handler_is_retried_with_backoff_and_then_succeeds,
    a_handler_failing_beyond_its_retries_dead_letters_the_event_and_goes_on,
    a_failed_batch_is_retried_whole,
    a_rejected_event_is_dead_lettered_at_once_while_other_failures_are_retried,
    the_stop_policy_stops_the_worker_without_committing_past_the_failure,
);
