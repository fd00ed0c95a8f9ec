use serde::{Deserialize, Serialize};
use stream_core::Record;

#[derive(Record, Serialize, Deserialize)]
struct Reading {
    #[record(range(min = "a", max = 10))]
    level: u8,
}

fn main() {}
