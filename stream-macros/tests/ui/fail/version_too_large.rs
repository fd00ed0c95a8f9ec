use serde::{Deserialize, Serialize};
use stream_core::Record;

#[derive(Record, Serialize, Deserialize)]
#[record(version = 5000000000)]
struct Reading {
    sensor_id: u32,
}

fn main() {}
