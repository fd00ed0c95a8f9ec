use serde::{Deserialize, Serialize};
use stream_core::Record;

#[derive(Record, Serialize, Deserialize)]
#[record(namespace = "")]
struct Reading {
    sensor_id: u32,
}

fn main() {}
