use serde::{Deserialize, Serialize};
use stream_core::Record;

#[derive(Record, Serialize, Deserialize)]
struct Reading {
    #[record(len(max = 2.5))]
    name: String,
}

fn main() {}
