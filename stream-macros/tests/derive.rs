//! Run-time behaviour of `#[derive(Record)]`: validation, key, event time,
//! schema, defaults and the codec.
#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use stream_core::codec::Codec;
use stream_core::record::Violation;
use stream_core::{Payload, Record};

fn not_reserved(id: &str) -> Result<(), String> {
    if id == "root" { Err(format!("`{id}` is reserved")) } else { Ok(()) }
}

fn even(value: &i64) -> Result<(), &'static str> {
    if value % 2 == 0 { Ok(()) } else { Err("must be even") }
}

fn low_before_high(reading: &Reading) -> Result<(), String> {
    if reading.low <= reading.high { Ok(()) } else { Err(format!("low {} above high {}", reading.low, reading.high)) }
}

/// A sensor reading with every kind of rule.
#[derive(Record, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[record(namespace = "sensors.reading", version = 3, validate = low_before_high)]
struct Reading {
    /// The sensor's id:
    ///   lower-case letters.
    #[record(key, regex = "^[a-z]+$", len(min = 2, max = 8), validate = not_reserved)]
    sensor_id: String,
    /// Epoch seconds, as the sensor sends them.
    #[record(timestamp)]
    sent_at: f64,
    #[record(range(min = -90.0, max = 60.0))]
    celsius: f64,
    #[serde(rename = "pct")]
    #[record(min = 0, max = 100)]
    humidity: u8,
    #[record(non_empty)]
    tags: Vec<String>,
    #[record(len(max = 2))]
    labels: HashMap<String, String>,
    #[record(regex = r"^\d{3}$", non_empty)]
    site: Option<String>,
    #[record(range(max = 10))]
    level: Option<i32>,
    #[record(validate = even)]
    low: i64,
    high: i64,
}

fn good() -> Reading {
    Reading {
        sensor_id: "roof".into(),
        sent_at: 1_700_000_000.25,
        celsius: 21.5,
        humidity: 40,
        tags: vec!["a".into()],
        labels: HashMap::new(),
        site: Some("042".into()),
        level: None,
        low: 2,
        high: 8,
    }
}

fn violations(reading: &Reading) -> Vec<(&'static str, String)> {
    match reading.validate() {
        Ok(()) => Vec::new(),
        Err(err) => {
            assert_eq!(err.record, "Reading");
            err.violations.into_iter().map(|Violation { field, message }| (field, message)).collect()
        }
    }
}

#[test]
fn valid_record_passes() {
    assert_eq!(good().validate(), Ok(()));
}

#[test]
fn every_violation_is_reported_with_wire_names_in_field_order() {
    let bad = Reading {
        sensor_id: "Root-Sensor-9".into(),
        sent_at: 0.0,
        celsius: -91.0,
        humidity: 101,
        tags: vec![],
        labels: (0..3).map(|i| (i.to_string(), String::new())).collect(),
        site: Some("42".into()),
        level: Some(11),
        low: 9,
        high: 1,
    };
    assert_eq!(
        violations(&bad),
        [
            ("sensorId", "does not match /^[a-z]+$/".to_owned()),
            ("sensorId", "length 13, must be between 2 and 8".to_owned()),
            ("celsius", "out of range: must satisfy range(min = -90.0, max = 60.0)".to_owned()),
            ("pct", "out of range: must satisfy max = 100".to_owned()),
            ("tags", "must not be empty".to_owned()),
            ("labels", "length 3, must be at most 2".to_owned()),
            ("site", r"does not match /^\d{3}$/".to_owned()),
            ("level", "out of range: must satisfy range(max = 10)".to_owned()),
            ("low", "must be even".to_owned()),
            ("*", "low 9 above high 1".to_owned()),
        ]
    );
    let err = bad.validate().unwrap_err();
    assert!(err.to_string().starts_with("invalid Reading: sensorId: does not match"), "{err}");
}

#[test]
fn custom_field_rule_and_option_rules() {
    let reserved = Reading { sensor_id: "root".into(), ..good() };
    assert_eq!(violations(&reserved), [("sensorId", "`root` is reserved".to_owned())]);

    // An empty Option passes range and regex but not non_empty.
    let no_site = Reading { site: None, level: None, ..good() };
    assert_eq!(violations(&no_site), [("site", "must not be empty".to_owned())]);

    let nan = Reading { celsius: f64::NAN, ..good() };
    assert_eq!(violations(&nan).len(), 1);
}

#[test]
fn bounds_are_inclusive() {
    let edge = Reading { celsius: -90.0, humidity: 100, sensor_id: "ab".into(), level: Some(10), ..good() };
    assert_eq!(edge.validate(), Ok(()));
    let edge = Reading { celsius: 60.0, humidity: 0, sensor_id: "abcdefgh".into(), ..good() };
    assert_eq!(edge.validate(), Ok(()));
}

#[test]
fn key_and_event_time() {
    let reading = good();
    assert_eq!(reading.key(), Some("roof".to_owned()));
    assert_eq!(reading.event_time_ms(), Some(1_700_000_000_250));
}

#[test]
fn namespace_version_and_schema() {
    assert_eq!(Reading::NAMESPACE, "sensors.reading");
    assert_eq!(Reading::VERSION, 3);
    let schema = Reading::schema();
    assert_eq!(schema.name, "Reading");
    assert_eq!(schema.namespace, "sensors.reading");
    assert_eq!(schema.version, 3);
    let names: Vec<_> = schema.fields.iter().map(|f| f.name).collect();
    assert_eq!(names, ["sensorId", "sentAt", "celsius", "pct", "tags", "labels", "site", "level", "low", "high"]);
    let types: Vec<_> = schema.fields.iter().map(|f| f.ty).collect();
    assert_eq!(
        types,
        [
            "String",
            "f64",
            "f64",
            "u8",
            "Vec<String>",
            "HashMap<String, String>",
            "Option<String>",
            "Option<i32>",
            "i64",
            "i64"
        ]
    );

    let id = schema.field("sensorId").unwrap();
    assert!(id.key && !id.timestamp);
    assert_eq!(id.rules, [r#"regex = "^[a-z]+$""#, "len(min = 2, max = 8)", "validate = not_reserved"]);
    assert_eq!(id.doc, "The sensor's id: lower-case letters.");

    let sent = schema.field("sentAt").unwrap();
    assert!(sent.timestamp && !sent.key);
    assert!(sent.rules.is_empty());
    assert_eq!(sent.doc, "Epoch seconds, as the sensor sends them.");

    assert_eq!(schema.field("celsius").unwrap().rules, ["range(min = -90.0, max = 60.0)"]);
    assert_eq!(schema.field("pct").unwrap().rules, ["min = 0", "max = 100"]);
    assert_eq!(schema.field("tags").unwrap().rules, ["non_empty"]);
    assert_eq!(schema.field("labels").unwrap().rules, ["len(max = 2)"]);
    assert_eq!(schema.field("site").unwrap().rules, [r#"regex = r"^\d{3}$""#, "non_empty"]);
    assert_eq!(schema.field("low").unwrap().rules, ["validate = even"]);
    let high = schema.field("high").unwrap();
    assert_eq!((high.rules.len(), high.doc), (0, ""));
    assert!(schema.field("humidity").is_none(), "renamed fields are found by wire name");

    // The schema is one static.
    assert!(std::ptr::eq(Reading::schema(), schema));
    let table = schema.to_string();
    assert!(table.starts_with("Reading (sensors.reading v3)"), "{table}");
    assert!(table.contains("| sensorId | `String` | key |"), "{table}");
}

/// No key, no timestamp, no rules, no attributes at all.
#[derive(Record, Serialize, Deserialize, Debug, PartialEq)]
struct Plain {
    text: String,
    at: Option<u64>,
}

#[test]
fn defaults_without_attributes() {
    let plain = Plain { text: String::new(), at: Some(5) };
    assert_eq!(plain.validate(), Ok(()));
    assert_eq!(plain.key(), None::<()>);
    assert_eq!(plain.event_time_ms(), None, "no #[record(timestamp)], no event time");
    assert_eq!(Plain::NAMESPACE, "Plain");
    assert_eq!(Plain::VERSION, 1);
    let schema = Plain::schema();
    assert_eq!((schema.name, schema.namespace, schema.version), ("Plain", "Plain", 1));
    let fields: Vec<_> = schema.fields.iter().map(|f| (f.name, f.ty, f.key, f.timestamp)).collect();
    assert_eq!(fields, [("text", "String", false, false), ("at", "Option<u64>", false, false)]);
}

/// Integer, SystemTime and chrono event times, and an optional one.
#[derive(Record, Serialize, Deserialize, Debug)]
struct Times {
    #[record(key)]
    id: u32,
    #[record(timestamp)]
    at: Option<u64>,
    when: SystemTime,
    utc: chrono::DateTime<chrono::Utc>,
}

#[derive(Record, Serialize, Deserialize, Debug)]
struct AtSystemTime {
    #[record(timestamp)]
    when: SystemTime,
}

#[derive(Record, Serialize, Deserialize, Debug)]
struct AtChrono {
    #[record(timestamp)]
    utc: chrono::DateTime<chrono::FixedOffset>,
}

#[test]
fn event_time_types() {
    let times = Times { id: 1, at: Some(42), when: SystemTime::UNIX_EPOCH, utc: chrono::DateTime::UNIX_EPOCH };
    assert_eq!(times.event_time_ms(), Some(42));
    assert_eq!(times.key(), Some(1));
    assert_eq!(Times { at: None, ..times }.event_time_ms(), None);
    assert_eq!(Times { at: Some(u64::MAX), ..times }.event_time_ms(), None);

    let at = AtSystemTime { when: SystemTime::UNIX_EPOCH + Duration::from_millis(1_234) };
    assert_eq!(at.event_time_ms(), Some(1_234));
    let utc = chrono::DateTime::parse_from_rfc3339("2024-01-01T01:00:00+01:00").unwrap();
    assert_eq!(AtChrono { utc }.event_time_ms(), Some(1_704_067_200_000));
}

/// A generic envelope; the type parameter carries the bounds the impls need.
#[derive(Record, Serialize, Deserialize, Debug, PartialEq)]
#[serde(bound = "")]
#[record(namespace = "envelope")]
struct Envelope<T>
where
    T: Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
{
    #[record(key)]
    key: T,
    #[record(non_empty)]
    items: Vec<T>,
}

#[test]
fn generic_records() {
    let envelope = Envelope { key: 7_u16, items: vec![] };
    assert_eq!(envelope.key(), Some(7));
    assert_eq!(violations_of(&envelope), ["items: must not be empty"]);
    assert_eq!(Envelope::<u16>::schema().fields[1].ty, "Vec<T>");
    assert!(std::ptr::eq(Envelope::<u16>::schema(), Envelope::<String>::schema()));
}

fn violations_of<T: Payload>(value: &T) -> Vec<String> {
    match value.validate() {
        Ok(()) => Vec::new(),
        Err(err) => err.violations.iter().map(|v| format!("{}: {}", v.field, v.message)).collect(),
    }
}

#[test]
fn json_codec_round_trip() {
    let codec = <Reading as Payload>::Codec::default();
    assert_eq!(Codec::<Reading>::name(&codec), "json");
    let reading = good();
    let bytes = codec.encode(&reading).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(json["sensorId"], "roof");
    assert_eq!(json["pct"], 40);
    let back: Reading = codec.decode(&bytes).unwrap();
    assert_eq!(back, reading);
    let err = Codec::<Reading>::decode(&codec, b"{\"sensorId\": 1}").unwrap_err();
    assert_eq!(err.codec, "json");
}

mod renamed {
    //! `crate = "..."`: stream-core under another path.
    pub(crate) mod strom {
        pub(crate) use stream_core as core;
    }

    #[derive(stream_core::Record, serde::Serialize, serde::Deserialize)]
    #[serde(rename_all = "SCREAMING-KEBAB-CASE")]
    #[record(crate = "self::strom::core")]
    pub(crate) struct Renamed {
        #[record(len(max = 3))]
        pub(crate) short_name: String,
    }
}

#[test]
fn crate_path_override_and_rename_all() {
    use renamed::Renamed;
    let value = Renamed { short_name: "abcd".into() };
    assert_eq!(violations_of(&value), ["SHORT-NAME: length 4, must be at most 3"]);
    assert_eq!(Renamed::schema().fields[0].name, "SHORT-NAME");
}
