//! The records on the sensor pipeline's topics.
//!
//! - `sensors.raw` (keyed by the MQTT topic): [`RawReading`], what collection
//!   received, untouched;
//! - `sensors.processed` (keyed by sensor number): [`Temperature`], one
//!   reading in Celsius with its event time;
//! - `sensors.averages` (keyed by sensor number): [`Average`], the average of
//!   a sensor's last 10 readings, emitted for every reading.

use serde::{Deserialize, Serialize};
use stream_core::Record;

/// The topic collection writes to.
pub const RAW: &str = "sensors.raw";
/// The topic processing writes to.
pub const PROCESSED: &str = "sensors.processed";
/// The topic aggregation writes to.
pub const AVERAGES: &str = "sensors.averages";
/// The partitions of the pipeline's topics.
pub const PARTITIONS: i32 = 4;

/// An MQTT message as collection received it.
#[derive(Record, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[record(namespace = "sensors.raw")]
pub struct RawReading {
    /// The MQTT topic it was published on (`sensors/<N>/temperature` or `/sensor<N>/temp`).
    #[record(key, non_empty)]
    pub mqtt_topic: String,
    /// The payload, as UTF-8 text (collection dead-letters payloads that are not).
    pub payload: String,
    /// When collection received it, epoch milliseconds.
    #[record(timestamp)]
    pub received_ms: i64,
}

/// One reading in Celsius.
#[derive(Record, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[record(namespace = "sensors.processed")]
pub struct Temperature {
    /// The sensor number.
    #[record(key)]
    pub sensor_num: u32,
    /// The temperature in degrees Celsius.
    #[record(range(min = -273.15, max = 1000.0))]
    pub value: f64,
    /// When the sensor measured it, epoch milliseconds.
    #[record(timestamp)]
    pub timestamp_ms: i64,
    /// When collection received it, epoch milliseconds.
    pub received_ms: i64,
}

/// The average of a sensor's last 10 readings (fewer at the start).
#[derive(Record, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[record(namespace = "sensors.average")]
pub struct Average {
    /// The sensor number.
    #[record(key)]
    pub sensor_num: u32,
    /// The average in degrees Celsius.
    pub value: f64,
    /// The event time of the newest reading in the average, epoch milliseconds.
    #[record(timestamp)]
    pub timestamp_ms: i64,
    /// How many readings it averages (10 once the sensor sent 10).
    pub count: u32,
}
