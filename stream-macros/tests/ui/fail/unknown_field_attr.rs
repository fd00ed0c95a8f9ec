use serde::{Deserialize, Serialize};
use stream_core::Record;

#[derive(Record, Serialize, Deserialize)]
struct Reading {
    #[record(unique)]
    sensor_id: u32,
}

fn main() {}
