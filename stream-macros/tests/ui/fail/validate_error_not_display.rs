use serde::{Deserialize, Serialize};
use stream_core::Record;

fn check(value: &u32) -> Result<(), ()> {
    if *value > 0 { Ok(()) } else { Err(()) }
}

#[derive(Record, Serialize, Deserialize)]
struct Reading {
    #[record(validate = check)]
    sensor_id: u32,
}

fn main() {}
