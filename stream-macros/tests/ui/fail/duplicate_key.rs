use serde::{Deserialize, Serialize};
use stream_core::Record;

#[derive(Record, Serialize, Deserialize)]
struct Reading {
    #[record(key)]
    sensor_id: u32,
    #[record(key)]
    site_id: u32,
}

fn main() {}
