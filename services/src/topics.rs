//! The pipeline's topics, declared the same way by every service that uses
//! them (names from [`crate::records`], [`PARTITIONS`] partitions).

use stream_core::{App, Topic};

use crate::records::{AVERAGES, Average, PARTITIONS, PROCESSED, RAW, RawReading, Temperature};

/// `sensors.raw`: what collection received, keyed by MQTT topic.
pub fn raw(app: &App) -> Topic<String, RawReading> {
    app.topic(RAW).partitions(PARTITIONS)
}

/// `sensors.raw.dlq`: raw readings no stage could understand, with the reason
/// in the `strom.error` header (collection's rejects, processing's too).
pub fn raw_dead_letters(app: &App) -> Topic<String, Vec<u8>> {
    app.topic(&stream_core::dlq::dlq_topic(RAW)).partitions(PARTITIONS)
}

/// `sensors.processed`: readings in Celsius, keyed by sensor number.
pub fn processed(app: &App) -> Topic<u32, Temperature> {
    app.topic(PROCESSED).partitions(PARTITIONS)
}

/// `sensors.averages`: the average of each sensor's last readings, keyed by
/// sensor number.
pub fn averages(app: &App) -> Topic<u32, Average> {
    app.topic(AVERAGES).partitions(PARTITIONS)
}
