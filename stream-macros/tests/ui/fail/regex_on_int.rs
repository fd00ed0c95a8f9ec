use serde::{Deserialize, Serialize};
use stream_core::Record;

#[derive(Record, Serialize, Deserialize)]
struct Reading {
    #[record(regex = "^[0-9]+$")]
    sensor_id: u32,
}

fn main() {}
