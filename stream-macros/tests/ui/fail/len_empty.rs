use serde::{Deserialize, Serialize};
use stream_core::Record;

#[derive(Record, Serialize, Deserialize)]
struct Reading {
    #[record(len())]
    name: String,
}

fn main() {}
