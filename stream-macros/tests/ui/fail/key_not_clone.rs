use serde::{Deserialize, Serialize};
use stream_core::Record;

#[derive(Serialize, Deserialize)]
struct SensorId(u32);

#[derive(Record, Serialize, Deserialize)]
struct Reading {
    #[record(key)]
    sensor_id: SensorId,
}

fn main() {}
