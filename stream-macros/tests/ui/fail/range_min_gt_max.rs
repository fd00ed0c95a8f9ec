use serde::{Deserialize, Serialize};
use stream_core::Record;

#[derive(Record, Serialize, Deserialize)]
struct Reading {
    #[record(range(min = 60.0, max = -90.0))]
    celsius: f64,
}

fn main() {}
