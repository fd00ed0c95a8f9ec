use serde::{Deserialize, Serialize};
use stream_core::Record;

#[derive(Record, Serialize, Deserialize)]
#[record(validate = check_reading)]
struct Reading {
    sensor_id: u32,
}

fn main() {}
