//! What processing makes of a raw MQTT message: [`parse`] turns a
//! [`RawReading`] of either form into a [`Temperature`] in Celsius, or says
//! why it cannot ([`Rejected`]).
//!
//! The two forms (README, "The sensor pipeline's services"):
//!
//! - the seed's: topic `/sensor<N>/temp`, payload
//!   `{"timestamp": "1700000000.123", "value": "21"}`;
//! - the richer one: topic `sensors/<N>/temperature`, payload
//!   `{"sensor": 7, "temperature": 21.5, "unit": "C", "timestamp": "2026-11-23T12:00:00.123Z"}`.
//!
//! Either topic may have a prefix (`site-a/sensors/7/temperature`): only its
//! last segments are read. Values and timestamps may be JSON numbers or
//! strings; the value is `temperature` or `value`; `unit` is `C`, `F` or `K`
//! (default `C`); `timestamp` is RFC 3339 or epoch seconds or milliseconds
//! (numbers of 10^11 and more are milliseconds), and the receive time when
//! absent; `sensor`, when present, must match the topic.
//!
//! ```
//! use strom_services::records::RawReading;
//! use strom_services::sensors::parse;
//!
//! let raw = RawReading {
//!     mqtt_topic: "/sensor3/temp".into(),
//!     payload: r#"{"timestamp": "1700000000.123", "value": "21"}"#.into(),
//!     received_ms: 1_700_000_000_500,
//! };
//! let t = parse(&raw).unwrap();
//! assert_eq!((t.sensor_num, t.value, t.timestamp_ms), (3, 21.0, 1_700_000_000_123));
//! ```

use serde_json::Value;

use crate::records::{Average, RawReading, Temperature};

/// The lowest temperature there is, in Celsius.
pub const ABSOLUTE_ZERO: f64 = -273.15;
/// The highest temperature a sensor of this pipeline may report, in Celsius.
pub const MAX_CELSIUS: f64 = 1000.0;
/// Event times before this (2000-01-01T00:00:00Z, epoch ms) are rejected.
pub const EARLIEST_MS: i64 = 946_684_800_000;
/// Event times more than this ahead of the receive time are rejected.
pub const MAX_AHEAD_MS: i64 = 24 * 3600 * 1000;
/// Epoch timestamps at or above this are milliseconds, below it seconds
/// (10^11 s is the year 5138, 10^11 ms is 1973).
pub const MILLIS_FROM: f64 = 1e11;

/// Why a raw reading cannot be understood: the reason it is dead-lettered with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejected {
    /// The MQTT topic names no sensor.
    #[error("MQTT topic {0:?} is neither sensors/<N>/temperature nor /sensor<N>/temp")]
    Topic(String),
    /// The payload is not JSON.
    #[error("payload is not JSON: {0}")]
    NotJson(String),
    /// The payload is JSON but not an object.
    #[error("payload is not a JSON object")]
    NotObject,
    /// Neither `temperature` nor `value` is there.
    #[error("payload has no value (neither \"temperature\" nor \"value\")")]
    MissingValue,
    /// The value is not a finite number.
    #[error("value {0} is not a number")]
    NotNumeric(String),
    /// The unit is not C, F or K.
    #[error("unknown unit {0} (expected \"C\", \"F\" or \"K\")")]
    UnknownUnit(String),
    /// The `sensor` field is not a sensor number.
    #[error("sensor {0} is not a sensor number")]
    BadSensor(String),
    /// The `sensor` field names another sensor than the topic.
    #[error("sensor number mismatch: topic {topic:?} is sensor {from_topic}, payload says {from_payload}")]
    SensorMismatch {
        /// The MQTT topic.
        topic: String,
        /// The number in the topic.
        from_topic: u32,
        /// The number in the payload.
        from_payload: u32,
    },
    /// The timestamp is neither RFC 3339 nor an epoch number.
    #[error("timestamp {0} is neither RFC 3339 nor epoch seconds or milliseconds")]
    BadTimestamp(String),
    /// The timestamp is before 2000.
    #[error("timestamp {0} ms is before 2000-01-01")]
    TooOld(i64),
    /// The timestamp is more than a day after the receive time.
    #[error("timestamp {at_ms} ms is more than a day after the receive time {received_ms} ms")]
    InFuture {
        /// The event time, epoch ms.
        at_ms: i64,
        /// The receive time, epoch ms.
        received_ms: i64,
    },
    /// The temperature cannot be.
    #[error("{celsius} °C is out of range ({ABSOLUTE_ZERO} to {MAX_CELSIUS} °C)")]
    OutOfRange {
        /// The value, converted to Celsius.
        celsius: f64,
    },
}

/// A temperature unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Degrees Celsius.
    Celsius,
    /// Degrees Fahrenheit.
    Fahrenheit,
    /// Kelvin.
    Kelvin,
}

impl Unit {
    /// The unit's symbol on the wire.
    pub fn symbol(self) -> &'static str {
        match self {
            Unit::Celsius => "C",
            Unit::Fahrenheit => "F",
            Unit::Kelvin => "K",
        }
    }

    /// `value` in this unit, in Celsius.
    pub fn to_celsius(self, value: f64) -> f64 {
        match self {
            Unit::Celsius => value,
            Unit::Fahrenheit => (value - 32.0) * 5.0 / 9.0,
            Unit::Kelvin => value + ABSOLUTE_ZERO,
        }
    }

    /// `celsius` in this unit.
    pub fn from_celsius(self, celsius: f64) -> f64 {
        match self {
            Unit::Celsius => celsius,
            Unit::Fahrenheit => celsius * 9.0 / 5.0 + 32.0,
            Unit::Kelvin => celsius - ABSOLUTE_ZERO,
        }
    }
}

/// The sensor number an MQTT topic names: `.../sensors/<N>/temperature` or
/// `.../sensor<N>/temp`.
pub fn sensor_of_topic(topic: &str) -> Option<u32> {
    let mut segments = topic.rsplit('/');
    match (segments.next()?, segments.next()?) {
        ("temperature", n) if segments.next() == Some("sensors") => n.parse().ok(),
        ("temp", name) => name.strip_prefix("sensor")?.parse().ok(),
        _ => None,
    }
}

/// Parses a raw reading of either form into a reading in Celsius.
pub fn parse(raw: &RawReading) -> Result<Temperature, Rejected> {
    let sensor_num = sensor_of_topic(&raw.mqtt_topic).ok_or_else(|| Rejected::Topic(raw.mqtt_topic.clone()))?;
    let payload: Value = serde_json::from_str(&raw.payload).map_err(|e| Rejected::NotJson(e.to_string()))?;
    let fields = payload.as_object().ok_or(Rejected::NotObject)?;
    let field = |name: &str| fields.get(name).filter(|v| !v.is_null());

    if let Some(sensor) = field("sensor") {
        let from_payload = number(sensor)
            .filter(|n| n.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(n))
            .ok_or_else(|| Rejected::BadSensor(sensor.to_string()))? as u32;
        if from_payload != sensor_num {
            return Err(Rejected::SensorMismatch {
                topic: raw.mqtt_topic.clone(),
                from_topic: sensor_num,
                from_payload,
            });
        }
    }
    let value = field("temperature").or_else(|| field("value")).ok_or(Rejected::MissingValue)?;
    let value = number(value).ok_or_else(|| Rejected::NotNumeric(value.to_string()))?;
    let unit = match field("unit") {
        None => Unit::Celsius,
        Some(unit) => parse_unit(unit).ok_or_else(|| Rejected::UnknownUnit(unit.to_string()))?,
    };
    let celsius = unit.to_celsius(value);
    if !(ABSOLUTE_ZERO..=MAX_CELSIUS).contains(&celsius) {
        return Err(Rejected::OutOfRange { celsius });
    }
    let timestamp_ms = match field("timestamp") {
        None => raw.received_ms,
        Some(ts) => epoch_ms(ts).ok_or_else(|| Rejected::BadTimestamp(ts.to_string()))?,
    };
    if timestamp_ms < EARLIEST_MS {
        return Err(Rejected::TooOld(timestamp_ms));
    }
    if timestamp_ms > raw.received_ms.saturating_add(MAX_AHEAD_MS) {
        return Err(Rejected::InFuture { at_ms: timestamp_ms, received_ms: raw.received_ms });
    }
    Ok(Temperature { sensor_num, value: celsius, timestamp_ms, received_ms: raw.received_ms })
}

/// A finite number, from a JSON number or a string holding one.
fn number(value: &Value) -> Option<f64> {
    let n = match value {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    n.is_finite().then_some(n)
}

fn parse_unit(unit: &Value) -> Option<Unit> {
    let symbol = unit.as_str()?.trim();
    match symbol.strip_prefix('°').unwrap_or(symbol) {
        "C" | "c" => Some(Unit::Celsius),
        "F" | "f" => Some(Unit::Fahrenheit),
        "K" | "k" => Some(Unit::Kelvin),
        _ => None,
    }
}

/// Epoch milliseconds from RFC 3339 text or an epoch number (seconds below
/// [`MILLIS_FROM`], milliseconds above), as a JSON number or string.
fn epoch_ms(ts: &Value) -> Option<i64> {
    if let Some(n) = number(ts) {
        let ms = if n.abs() >= MILLIS_FROM { n } else { n * 1000.0 };
        return (ms.abs() < 1e15).then(|| ms.round() as i64);
    }
    chrono::DateTime::parse_from_rfc3339(ts.as_str()?.trim()).ok().map(|t| t.timestamp_millis())
}

impl Average {
    /// The average of `values` (a sensor's last readings, oldest first, the
    /// newest being `latest`).
    pub fn of(latest: &Temperature, values: &[f64]) -> Average {
        let count = values.len().max(1);
        let value = if values.is_empty() { latest.value } else { values.iter().sum::<f64>() / count as f64 };
        Average { sensor_num: latest.sensor_num, value, timestamp_ms: latest.timestamp_ms, count: count as u32 }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const NOW: i64 = 1_700_000_000_500;

    fn raw(topic: &str, payload: &str) -> RawReading {
        RawReading { mqtt_topic: topic.into(), payload: payload.into(), received_ms: NOW }
    }

    #[test]
    fn topics_name_sensors() {
        for (topic, sensor) in [
            ("/sensor1/temp", Some(1)),
            ("/sensor42/temp", Some(42)),
            ("sensor7/temp", Some(7)),
            ("sensors/7/temperature", Some(7)),
            ("site-a/sensors/12/temperature", Some(12)),
            ("test-x//sensor3/temp", Some(3)),
            ("sensors/x/temperature", None),
            ("sensors/-1/temperature", None),
            ("/sensor/temp", None),
            ("/sensorx/temp", None),
            ("/sensor1/humidity", None),
            ("7/temperature", None),
            ("", None),
        ] {
            assert_eq!(sensor_of_topic(topic), sensor, "{topic}");
        }
    }

    #[test]
    fn good_readings_of_both_forms() {
        let rfc = "2023-11-14T22:13:20.250Z"; // 1_700_000_000_250
        for (topic, payload, sensor, celsius, ts) in [
            // the seed's form: strings, integers or floats
            ("/sensor1/temp", r#"{"timestamp": "1700000000.123", "value": "21"}"#, 1, 21.0, 1_700_000_000_123),
            ("/sensor2/temp", r#"{"timestamp": "1700000000", "value": "21.5"}"#, 2, 21.5, 1_700_000_000_000),
            ("/sensor3/temp", r#"{"timestamp": 1700000000.5, "value": 19}"#, 3, 19.0, 1_700_000_000_500),
            ("/sensor4/temp", r#"{"timestamp": 1700000000, "value": -3.25}"#, 4, -3.25, 1_700_000_000_000),
            ("/sensor5/temp", r#"{"value": " 20 "}"#, 5, 20.0, NOW),
            // the richer form: units, RFC 3339, epoch seconds or milliseconds
            (
                "sensors/7/temperature",
                &format!(r#"{{"sensor": 7, "temperature": 21.5, "unit": "C", "timestamp": "{rfc}"}}"#),
                7,
                21.5,
                1_700_000_000_250,
            ),
            (
                "sensors/8/temperature",
                r#"{"sensor": 8, "temperature": 212, "unit": "F", "timestamp": 1700000000123}"#,
                8,
                100.0,
                1_700_000_000_123,
            ),
            (
                "sensors/9/temperature",
                r#"{"sensor": "9", "temperature": "300.15", "unit": "K", "timestamp": "1700000000123"}"#,
                9,
                27.0,
                1_700_000_000_123,
            ),
            ("sensors/10/temperature", r#"{"temperature": 0, "unit": "K"}"#, 10, -273.15, NOW),
            (
                "sensors/11/temperature",
                r#"{"temperature": 50, "unit": "°f", "timestamp": "2023-11-14T23:13:20+01:00"}"#,
                11,
                10.0,
                1_700_000_000_000,
            ),
            (
                "sensors/12/temperature",
                r#"{"sensor": 12, "temperature": 1e1, "unit": null, "timestamp": null}"#,
                12,
                10.0,
                NOW,
            ),
            ("site/sensors/13/temperature", r#"{"value": 1000}"#, 13, 1000.0, NOW),
            // up to a day ahead of the receive time is fine
            (
                "/sensor14/temp",
                &format!(r#"{{"timestamp": {}, "value": 1}}"#, NOW + MAX_AHEAD_MS),
                14,
                1.0,
                NOW + MAX_AHEAD_MS,
            ),
        ] {
            let t = parse(&raw(topic, payload)).unwrap_or_else(|e| panic!("{topic} {payload}: {e}"));
            assert_eq!(t.sensor_num, sensor, "{payload}");
            assert!((t.value - celsius).abs() < 1e-9, "{payload}: {} != {celsius}", t.value);
            assert_eq!(t.timestamp_ms, ts, "{payload}");
            assert_eq!(t.received_ms, NOW);
        }
    }

    #[test]
    fn bad_readings_are_rejected_with_their_reason() {
        for (topic, payload, reason) in [
            ("sensors/x/temperature", r#"{"temperature": 1}"#, "neither sensors/<N>/temperature nor /sensor<N>/temp"),
            ("/sensor1/temp", "21", "not a JSON object"),
            ("/sensor1/temp", "not json", "payload is not JSON"),
            ("/sensor1/temp", r#"{"value": 21"#, "payload is not JSON"),
            ("/sensor1/temp", r#"{"timestamp": "1700000000"}"#, "payload has no value"),
            ("/sensor1/temp", r#"{"value": null}"#, "payload has no value"),
            ("/sensor1/temp", r#"{"value": "warm"}"#, r#"value "warm" is not a number"#),
            ("/sensor1/temp", r#"{"value": "NaN"}"#, r#"value "NaN" is not a number"#),
            ("/sensor1/temp", r#"{"value": "inf"}"#, "is not a number"),
            ("/sensor1/temp", r#"{"value": [21]}"#, "value [21] is not a number"),
            ("/sensor1/temp", r#"{"value": true}"#, "value true is not a number"),
            ("sensors/1/temperature", r#"{"temperature": 21, "unit": "R"}"#, r#"unknown unit "R""#),
            ("sensors/1/temperature", r#"{"temperature": 21, "unit": 1}"#, "unknown unit 1"),
            (
                "sensors/1/temperature",
                r#"{"sensor": 2, "temperature": 21}"#,
                "sensor number mismatch: topic \"sensors/1/temperature\" is sensor 1, payload says 2",
            ),
            (
                "sensors/1/temperature",
                r#"{"sensor": "one", "temperature": 21}"#,
                r#"sensor "one" is not a sensor number"#,
            ),
            ("sensors/1/temperature", r#"{"sensor": 1.5, "temperature": 21}"#, "sensor 1.5 is not a sensor number"),
            ("sensors/1/temperature", r#"{"temperature": -300}"#, "-300 °C is out of range"),
            ("sensors/1/temperature", r#"{"temperature": -1, "unit": "K"}"#, "out of range"),
            ("sensors/1/temperature", r#"{"temperature": 5000, "unit": "F"}"#, "out of range"),
            (
                "sensors/1/temperature",
                r#"{"temperature": 21, "timestamp": "yesterday"}"#,
                r#"timestamp "yesterday" is neither RFC 3339"#,
            ),
            ("sensors/1/temperature", r#"{"temperature": 21, "timestamp": "2023-11-14 22:13"}"#, "is neither RFC 3339"),
            ("sensors/1/temperature", r#"{"temperature": 21, "timestamp": {}}"#, "timestamp {} is neither"),
            ("sensors/1/temperature", r#"{"temperature": 21, "timestamp": 1e300}"#, "is neither RFC 3339"),
            ("sensors/1/temperature", r#"{"temperature": 21, "timestamp": 0}"#, "timestamp 0 ms is before 2000-01-01"),
            (
                "sensors/1/temperature",
                r#"{"temperature": 21, "timestamp": "1999-12-31T23:59:59Z"}"#,
                "before 2000-01-01",
            ),
            ("/sensor1/temp", r#"{"value": 21, "timestamp": -1700000000}"#, "before 2000-01-01"),
            (
                "/sensor1/temp",
                &format!(r#"{{"value": 21, "timestamp": {}}}"#, NOW + MAX_AHEAD_MS + 1),
                "more than a day after the receive time",
            ),
            ("/sensor1/temp", r#"{"value": 21, "timestamp": "2100-01-01T00:00:00Z"}"#, "more than a day after"),
        ] {
            let err = parse(&raw(topic, payload)).expect_err(payload).to_string();
            assert!(err.contains(reason), "{topic} {payload}: {err:?} does not say {reason:?}");
        }
    }

    #[test]
    fn units_convert_both_ways() {
        for unit in [Unit::Celsius, Unit::Fahrenheit, Unit::Kelvin] {
            for c in [-40.0, 0.0, 21.5, 100.0] {
                assert!((unit.to_celsius(unit.from_celsius(c)) - c).abs() < 1e-9);
            }
        }
        assert_eq!(Unit::Fahrenheit.from_celsius(-40.0), -40.0);
    }

    #[test]
    fn average_of_the_window() {
        let latest = Temperature { sensor_num: 4, value: 30.0, timestamp_ms: 7, received_ms: 8 };
        assert_eq!(
            Average::of(&latest, &[10.0, 20.0, 30.0]),
            Average { sensor_num: 4, value: 20.0, timestamp_ms: 7, count: 3 }
        );
        assert_eq!(Average::of(&latest, &[]).count, 1);
    }
}
