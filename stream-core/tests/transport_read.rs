//! Reading partitions by offset, as table recovery, standbys and the test
//! driver do: reads of several partitions side by side, each in chunks that
//! continue where the last one stopped, and reads that jump back.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use stream_core::testing::TestDriver;
use stream_core::tracking::SendTracker;
use stream_core::transport::{self, RawMessage, TopicPartition, Transport};

mod common;
use common::Env;

const PER_PARTITION: usize = 2_000;
const CHUNK: usize = 333;

/// `(offset, value)` of messages.
fn offsets_and_values(messages: &[RawMessage]) -> Vec<(i64, Vec<u8>)> {
    messages.iter().map(|m| (m.offset, m.value.as_deref().unwrap_or_default().to_vec())).collect()
}

/// Reads a partition in chunks of `CHUNK`, going back to the start once in
/// between (a read elsewhere than where the last one stopped).
async fn read_in_chunks(transport: Arc<dyn Transport>, tp: TopicPartition) -> Vec<RawMessage> {
    let mut out = Vec::new();
    let mut from = 0;
    loop {
        let batch = transport.read(&tp, from, CHUNK).await.unwrap();
        let n = batch.messages.len();
        if from == 0 && n > 0 {
            let again = transport.read(&tp, 0, 10).await.unwrap();
            assert_eq!(offsets_and_values(&again.messages), offsets_and_values(&batch.messages[..10]), "{tp}");
        }
        out.extend(batch.messages);
        from = batch.next;
        if n < CHUNK {
            return out;
        }
    }
}

async fn chunked_reads_of_partitions_side_by_side_see_every_message_once_in_order(env: Env) {
    let app = env.app("reads");
    let topic = app.topic::<u32, u32>("log").partitions(3);
    let driver = TestDriver::start(&app).await.unwrap();
    // Keys 0..3 land on (up to) three partitions; each key's values count up.
    let mut pending = Vec::new();
    for i in 0..(3 * PER_PARTITION) as u32 {
        pending.push(topic.send(Some(&(i % 3)), &(i / 3)).await.unwrap());
    }
    for receipt in pending {
        receipt.await.unwrap();
    }
    let whole = driver.messages("log").await.unwrap();
    assert_eq!(whole.len(), 3 * PER_PARTITION);

    let transport = transport::connect(&app.config().broker, app.config(), SendTracker::new()).unwrap();
    let readers: Vec<_> = (0..3)
        .map(|partition| {
            let tp = TopicPartition { topic: topic.name().into(), partition };
            tokio::spawn(read_in_chunks(transport.clone(), tp))
        })
        .collect();
    for (partition, reader) in readers.into_iter().enumerate() {
        let got = reader.await.unwrap();
        let expected: Vec<RawMessage> = whole.iter().filter(|m| m.partition == partition as i32).cloned().collect();
        assert_eq!(offsets_and_values(&got), offsets_and_values(&expected), "partition {partition}");
    }
    // At the end, a read returns nothing and says where the end is.
    let tp = TopicPartition { topic: topic.name().into(), partition: 0 };
    let end = whole.iter().filter(|m| m.partition == 0).map(|m| m.offset + 1).max().unwrap_or(0);
    let batch = transport.read(&tp, end, CHUNK).await.unwrap();
    assert!(batch.messages.is_empty());
    assert_eq!(batch.next, end);
    driver.stop().await.unwrap();
}

on_every_transport!(chunked_reads_of_partitions_side_by_side_see_every_message_once_in_order);
