use serde::{Deserialize, Serialize};
use stream_core::Record;

#[derive(Record, Serialize, Deserialize)]
#[record(namespace = 1, version = 0, colour = "red")]
struct Reading {
    #[record(key, range(min = 5, max = 1))]
    sensor_id: u32,
    #[record(key, regex = "(", len(min = -2))]
    name: String,
    #[record(timestamp, timestamp)]
    at: i64,
}

fn main() {}
