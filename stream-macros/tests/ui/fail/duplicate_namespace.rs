use serde::{Deserialize, Serialize};
use stream_core::Record;

#[derive(Record, Serialize, Deserialize)]
#[record(namespace = "sensors.reading")]
#[record(version = 2, namespace = "sensors.readings")]
struct Reading {
    sensor_id: u32,
}

fn main() {}
