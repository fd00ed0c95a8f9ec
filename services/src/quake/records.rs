//! The record on `quakes.raw`, and how an EMSC message becomes one.
//!
//! EMSC's standing-order websocket sends one JSON text frame per event
//! change: `{"action": "create"|"update", "data": <GeoJSON Feature>}`, the
//! feature's `properties` holding the event. [`Quake::from_emsc`] reads such a
//! frame into a [`Quake`], or says exactly why it cannot ([`EmscError`]);
//! quake-source sends the quake to `quakes.raw` keyed by its `unid`, and the
//! frame it could not read to `quakes.raw.dlq` with that reason.
//!
//! On the topic a quake is flat JSON (the properties plus `action`), with
//! times as RFC 3339 text:
//!
//! ```json
//! {"action": "create", "unid": "20261201_0000042", "time": "2026-12-01T10:00:00.5Z",
//!  "lastupdate": "2026-12-01T10:02:00Z", "lat": 38.1, "lon": 21.3, "depth": 10.0,
//!  "mag": 4.2, "magtype": "ml", "flynn_region": "GREECE", "auth": "EMSC",
//!  "evtype": "ke", "source_id": "1234567", "source_catalog": "EMSC-RTS"}
//! ```

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use stream_core::Record;

/// The topic quake-source writes to and quake-loader and quake-map read.
pub const RAW: &str = "quakes.raw";
/// Its partitions.
pub const PARTITIONS: i32 = 4;

/// What happened to the event: EMSC's `action`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// A new event.
    Create,
    /// A revision of an event (a new magnitude, location, ...).
    Update,
}

impl Action {
    /// `create` or `update`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
        }
    }
}

/// One version of one earthquake, as EMSC last described it.
#[derive(Record, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[record(namespace = "quakes.event")]
pub struct Quake {
    /// `create` or `update`.
    pub action: Action,
    /// EMSC's unique event id: the key.
    #[record(key, non_empty, len(max = 128))]
    pub unid: String,
    /// When the earthquake happened (origin time).
    #[record(timestamp)]
    pub time: DateTime<Utc>,
    /// When EMSC last revised the event: of two versions, the later `lastupdate` wins.
    pub lastupdate: DateTime<Utc>,
    /// Latitude, degrees.
    #[record(range(min = -90.0, max = 90.0))]
    pub lat: f64,
    /// Longitude, degrees.
    #[record(range(min = -180.0, max = 180.0))]
    pub lon: f64,
    /// Depth, km (positive down), when known.
    #[record(range(min = -20.0, max = 1000.0))]
    pub depth: Option<f64>,
    /// Magnitude.
    #[record(range(min = -3.0, max = 11.0))]
    pub mag: f64,
    /// The magnitude's type (`ml`, `mb`, `mw`, ...).
    pub magtype: Option<String>,
    /// The Flinn-Engdahl region name.
    pub flynn_region: Option<String>,
    /// The authority that located the event.
    pub auth: Option<String>,
    /// EMSC's event type (`ke`: known earthquake, ...).
    pub evtype: Option<String>,
    /// The id of the event in its source catalogue.
    pub source_id: Option<String>,
    /// The source catalogue.
    pub source_catalog: Option<String>,
}

/// Why an EMSC frame is not a quake: the reason its dead letter carries.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum EmscError {
    /// The frame is not JSON.
    #[error("not JSON: {0}")]
    NotJson(String),
    /// The JSON is not an object with `action` and `data.properties`.
    #[error("not an EMSC message: {0}")]
    Shape(String),
    /// `action` is neither `create` nor `update`.
    #[error("action {0} is neither \"create\" nor \"update\"")]
    Action(String),
    /// A property is missing or of the wrong type.
    #[error("property {field}: {reason}")]
    Field {
        /// The property.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The properties were read, but a value is out of range.
    #[error("invalid event: {0}")]
    Invalid(String),
}

impl Quake {
    /// Reads an EMSC websocket frame. Every way a frame can be wrong is an
    /// [`EmscError`] naming the property and the reason; a quake returned is
    /// valid ([`Payload::validate`](stream_core::Payload::validate) holds).
    pub fn from_emsc(text: &str) -> Result<Quake, EmscError> {
        let message: Value = serde_json::from_str(text).map_err(|e| EmscError::NotJson(e.to_string()))?;
        let Value::Object(message) = message else {
            return Err(EmscError::Shape(format!("a JSON {}, not an object", kind(&message))));
        };
        let action = match message.get("action") {
            None => return Err(EmscError::Shape("no \"action\"".into())),
            Some(Value::String(a)) if a == "create" => Action::Create,
            Some(Value::String(a)) if a == "update" => Action::Update,
            Some(other) => return Err(EmscError::Action(truncate(&other.to_string(), 64))),
        };
        let properties = match message.get("data").map(|d| d.get("properties")) {
            None => return Err(EmscError::Shape("no \"data\"".into())),
            Some(None) => {
                return Err(EmscError::Shape("\"data\" has no \"properties\" (not a GeoJSON feature)".into()));
            }
            Some(Some(Value::Object(p))) => p,
            Some(Some(other)) => {
                return Err(EmscError::Shape(format!("\"data.properties\" is a JSON {}, not an object", kind(other))));
            }
        };
        let quake = Quake {
            action,
            unid: string(properties, "unid")?,
            time: time(properties, "time")?,
            lastupdate: time(properties, "lastupdate")?,
            lat: number(properties, "lat")?,
            lon: number(properties, "lon")?,
            depth: optional_number(properties, "depth")?,
            mag: number(properties, "mag")?,
            magtype: optional_text(properties, "magtype"),
            flynn_region: optional_text(properties, "flynn_region"),
            auth: optional_text(properties, "auth"),
            evtype: optional_text(properties, "evtype"),
            source_id: optional_text(properties, "source_id"),
            source_catalog: optional_text(properties, "source_catalog"),
        };
        stream_core::Payload::validate(&quake).map_err(|e| EmscError::Invalid(e.to_string()))?;
        Ok(quake)
    }

    /// The event as EMSC sends it: `{"action": ..., "data": <GeoJSON Feature>}`
    /// (what the project's EMSC stand-in plays).
    pub fn to_emsc(&self) -> Value {
        serde_json::json!({ "action": self.action.as_str(), "data": self.feature() })
    }

    /// The event as a GeoJSON Feature: a point at (lon, lat, -depth), the
    /// `unid` as its `id`, the properties as EMSC names them.
    pub fn feature(&self) -> Value {
        let mut coordinates = vec![Value::from(self.lon), Value::from(self.lat)];
        if let Some(depth) = self.depth {
            coordinates.push(Value::from(-depth));
        }
        serde_json::json!({
            "type": "Feature",
            "id": self.unid,
            "geometry": { "type": "Point", "coordinates": coordinates },
            "properties": {
                "unid": self.unid,
                "time": rfc3339(&self.time),
                "lastupdate": rfc3339(&self.lastupdate),
                "lat": self.lat,
                "lon": self.lon,
                "depth": self.depth,
                "mag": self.mag,
                "magtype": self.magtype,
                "flynn_region": self.flynn_region,
                "auth": self.auth,
                "evtype": self.evtype,
                "source_id": self.source_id,
                "source_catalog": self.source_catalog,
                "action": self.action.as_str(),
            },
        })
    }

    /// Whether this version should replace `stored`: it was revised later.
    /// A stale update (older or equal `lastupdate`) never overwrites.
    pub fn supersedes(&self, stored: &Quake) -> bool {
        self.lastupdate > stored.lastupdate
    }
}

/// A time as RFC 3339 with milliseconds, UTC (`2026-12-01T10:00:00.500Z`).
pub fn rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// At most `max` characters of `s` (what a dead letter's reason quotes of the input).
fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((end, _)) => format!("{}...", &s[..end]),
        None => s.to_owned(),
    }
}

fn field(field: &'static str, reason: impl Into<String>) -> EmscError {
    EmscError::Field { field, reason: reason.into() }
}

fn string(p: &Map<String, Value>, name: &'static str) -> Result<String, EmscError> {
    match p.get(name) {
        None | Some(Value::Null) => Err(field(name, "missing")),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(field(name, format!("a JSON {}, not a string", kind(other)))),
    }
}

fn time(p: &Map<String, Value>, name: &'static str) -> Result<DateTime<Utc>, EmscError> {
    let s = string(p, name)?;
    DateTime::parse_from_rfc3339(&s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| field(name, format!("{:?} is not an RFC 3339 time ({e})", truncate(&s, 64))))
}

fn number(p: &Map<String, Value>, name: &'static str) -> Result<f64, EmscError> {
    match p.get(name) {
        None | Some(Value::Null) => Err(field(name, "missing")),
        Some(Value::Number(n)) => n.as_f64().ok_or_else(|| field(name, format!("{n} is not a finite number"))),
        Some(other) => Err(field(name, format!("{} is not a number", truncate(&other.to_string(), 64)))),
    }
}

fn optional_number(p: &Map<String, Value>, name: &'static str) -> Result<Option<f64>, EmscError> {
    match p.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => number(p, name).map(Some),
    }
}

/// A text property; absent, null or not a string is none (they are only shown).
fn optional_text(p: &Map<String, Value>, name: &str) -> Option<String> {
    match p.get(name) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn emsc(properties: &Value) -> String {
        serde_json::json!({"action": "create", "data": {"type": "Feature", "properties": properties}}).to_string()
    }

    fn good() -> Value {
        serde_json::json!({
            "unid": "20261201_0000042", "time": "2026-12-01T10:00:00.5Z", "lastupdate": "2026-12-01T10:02:00Z",
            "lat": 38.1, "lon": 21.3, "depth": 10, "mag": 4.2, "magtype": "ml", "flynn_region": "GREECE",
            "auth": "EMSC", "evtype": "ke", "source_id": "1234567", "source_catalog": "EMSC-RTS"
        })
    }

    #[test]
    fn an_emsc_message_becomes_a_quake_and_back() {
        let quake = Quake::from_emsc(&emsc(&good())).unwrap();
        assert_eq!(quake.unid, "20261201_0000042");
        assert_eq!(quake.action, Action::Create);
        assert_eq!(quake.depth, Some(10.0));
        assert_eq!(rfc3339(&quake.time), "2026-12-01T10:00:00.500Z");
        use stream_core::Record as _;
        assert_eq!(quake.key().as_deref(), Some("20261201_0000042"));
        let again = Quake::from_emsc(&quake.to_emsc().to_string()).unwrap();
        assert_eq!(again, quake);
        assert_eq!(quake.feature()["geometry"]["coordinates"], serde_json::json!([21.3, 38.1, -10.0]));
        // On the topic: flat JSON that reads back.
        let json = serde_json::to_string(&quake).unwrap();
        assert_eq!(serde_json::from_str::<Quake>(&json).unwrap(), quake);
    }

    #[test]
    fn every_kind_of_malformed_message_has_its_reason() {
        let with = |name: &str, value: Value| {
            let mut p = good();
            p[name] = value;
            emsc(&p)
        };
        let without = |name: &str| {
            let mut p = good();
            p.as_object_mut().unwrap().remove(name);
            emsc(&p)
        };
        let cases: Vec<(String, &str)> = vec![
            ("not json".into(), "not JSON"),
            ("[1, 2]".into(), "not an object"),
            (r#"{"data": {}}"#.into(), "no \"action\""),
            (r#"{"action": "delete", "data": {"properties": {}}}"#.into(), "action \"delete\""),
            (r#"{"action": 3, "data": {"properties": {}}}"#.into(), "action 3"),
            (r#"{"action": "create"}"#.into(), "no \"data\""),
            (r#"{"action": "create", "data": {"type": "Feature"}}"#.into(), "no \"properties\""),
            (r#"{"action": "create", "data": {"properties": []}}"#.into(), "not an object"),
            (without("unid"), "property unid: missing"),
            (with("unid", serde_json::json!(42)), "property unid: a JSON number, not a string"),
            (with("unid", serde_json::json!("")), "unid"),
            (with("time", serde_json::json!("yesterday")), "property time: \"yesterday\" is not an RFC 3339"),
            (without("lastupdate"), "property lastupdate: missing"),
            (with("lat", serde_json::json!("north")), "property lat: \"north\" is not a number"),
            (with("lat", serde_json::json!(91.0)), "lat"),
            (with("lon", serde_json::json!(-181.0)), "lon"),
            (with("mag", serde_json::json!(null)), "property mag: missing"),
            (with("mag", serde_json::json!(12.5)), "mag"),
            (with("depth", serde_json::json!("deep")), "property depth"),
        ];
        for (text, expected) in cases {
            let err = Quake::from_emsc(&text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text}: {err:?} does not say {expected:?}");
        }
    }

    #[test]
    fn a_later_revision_supersedes_an_earlier_one_and_never_the_reverse() {
        let first = Quake::from_emsc(&emsc(&good())).unwrap();
        let mut later = first.clone();
        later.lastupdate += chrono::Duration::seconds(60);
        later.mag = 4.5;
        assert!(later.supersedes(&first));
        assert!(!first.supersedes(&later));
        assert!(!first.supersedes(&first));
    }

    #[test]
    fn long_input_is_quoted_short() {
        let err = Quake::from_emsc(&with_long_action()).unwrap_err().to_string();
        assert!(err.len() < 200, "{err}");
    }

    fn with_long_action() -> String {
        serde_json::json!({"action": "x".repeat(10_000), "data": {"properties": {}}}).to_string()
    }
}
