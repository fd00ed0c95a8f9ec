use serde::{Deserialize, Serialize};
use stream_core::Record;

#[derive(Record, Serialize, Deserialize)]
struct Reading {
    #[record(regex = "^[a-z+$")]
    name: String,
}

fn main() {}
