use serde::{Deserialize, Serialize};
use stream_core::Record;

#[derive(Record, Serialize, Deserialize)]
struct Reading {
    #[record(min = 10, max = 5)]
    level: u8,
}

fn main() {}
