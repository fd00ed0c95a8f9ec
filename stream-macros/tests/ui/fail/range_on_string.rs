use serde::{Deserialize, Serialize};
use stream_core::Record;

#[derive(Record, Serialize, Deserialize)]
struct Reading {
    #[record(range(min = 0, max = 10))]
    level: String,
}

fn main() {}
