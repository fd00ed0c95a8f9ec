use serde::{Deserialize, Serialize};
use stream_core::Record;

#[derive(Record, Serialize, Deserialize)]
#[record(version = 0)]
struct Reading {
    sensor_id: u32,
}

fn main() {}
