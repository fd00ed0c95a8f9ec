use serde::{Deserialize, Serialize};
use stream_core::Record;

fn check(value: &str) -> Result<(), String> {
    if value.is_empty() { Err("empty".into()) } else { Ok(()) }
}

#[derive(Record, Serialize, Deserialize)]
struct Reading {
    #[record(validate = check)]
    sensor_id: u32,
}

fn main() {}
