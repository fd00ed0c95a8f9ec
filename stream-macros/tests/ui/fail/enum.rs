use serde::{Deserialize, Serialize};
use stream_core::Record;

#[derive(Record, Serialize, Deserialize)]
enum Reading {
    Celsius(f64),
    Fahrenheit(f64),
}

fn main() {}
