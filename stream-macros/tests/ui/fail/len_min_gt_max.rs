use serde::{Deserialize, Serialize};
use stream_core::Record;

#[derive(Record, Serialize, Deserialize)]
struct Reading {
    #[record(len(min = 8, max = 4))]
    name: String,
}

fn main() {}
