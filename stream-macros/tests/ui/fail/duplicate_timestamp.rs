use serde::{Deserialize, Serialize};
use stream_core::Record;

#[derive(Record, Serialize, Deserialize)]
struct Reading {
    #[record(timestamp)]
    sent_ms: i64,
    #[record(timestamp)]
    received_ms: i64,
}

fn main() {}
