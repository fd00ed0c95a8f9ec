//! Dead-letter queues: where messages an agent cannot handle go, with the reason.
//!
//! A message that cannot be decoded, fails validation, or whose handler keeps
//! failing is sent unchanged (key, value, original headers) to `<topic>.dlq`,
//! to the same partition number, with these headers added:
//!
//! | header | value |
//! |---|---|
//! | `strom.error` | the error, in words |
//! | `strom.error.kind` | `decode`, `validation` or `handler` |
//! | `strom.source.topic` | the topic it was read from |
//! | `strom.source.partition` | its partition |
//! | `strom.source.offset` | its offset |
//! | `strom.agent` | the agent that rejected it |
//! | `strom.failed.at` | when, epoch milliseconds |

use bytes::Bytes;

use crate::error::Error;
use crate::transport::{OutMessage, RawMessage};

/// The header carrying the error text.
pub const ERROR: &str = "strom.error";
/// The header carrying the kind of error.
pub const ERROR_KIND: &str = "strom.error.kind";
/// The header carrying the source topic.
pub const SOURCE_TOPIC: &str = "strom.source.topic";
/// The header carrying the source partition.
pub const SOURCE_PARTITION: &str = "strom.source.partition";
/// The header carrying the source offset.
pub const SOURCE_OFFSET: &str = "strom.source.offset";
/// The header carrying the agent's name.
pub const AGENT: &str = "strom.agent";
/// The header carrying the time of failure.
pub const FAILED_AT: &str = "strom.failed.at";

/// The dead-letter topic of a topic.
pub fn dlq_topic(topic: &str) -> String {
    format!("{topic}.dlq")
}

/// Why a message was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The bytes did not decode.
    Decode,
    /// The record broke a validation rule.
    Validation,
    /// The handler failed on it, beyond its retries.
    Handler,
    /// The handler refused it ([`Rejected`](crate::Rejected)), without retries.
    Rejected,
}

impl Kind {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Decode => "decode",
            Kind::Validation => "validation",
            Kind::Handler => "handler",
            Kind::Rejected => "rejected",
        }
    }

    pub(crate) fn of(error: &Error) -> Kind {
        match error {
            Error::Decode { .. } => Kind::Decode,
            Error::Invalid { .. } => Kind::Validation,
            _ => Kind::Handler,
        }
    }
}

/// The dead-letter message for `raw`.
pub(crate) fn letter(raw: &RawMessage, kind: Kind, reason: &str, agent: &str) -> OutMessage {
    let mut headers = raw.headers.clone();
    let text = |s: String| Bytes::from(s.into_bytes());
    headers.push((ERROR.into(), text(reason.to_owned())));
    headers.push((ERROR_KIND.into(), Bytes::from_static(kind.as_str().as_bytes())));
    headers.push((SOURCE_TOPIC.into(), text(raw.topic.to_string())));
    headers.push((SOURCE_PARTITION.into(), text(raw.partition.to_string())));
    headers.push((SOURCE_OFFSET.into(), text(raw.offset.to_string())));
    headers.push((AGENT.into(), text(agent.to_owned())));
    headers.push((FAILED_AT.into(), text(chrono::Utc::now().timestamp_millis().to_string())));
    OutMessage {
        topic: dlq_topic(&raw.topic).into(),
        partition: Some(raw.partition),
        key: raw.key.clone(),
        value: raw.value.clone(),
        headers,
        timestamp_ms: raw.timestamp_ms,
    }
}

/// A message read back from a dead-letter topic, with its reason.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The original key bytes.
    pub key: Option<Bytes>,
    /// The original value bytes.
    pub value: Option<Bytes>,
    /// `strom.error`.
    pub error: String,
    /// `strom.error.kind`.
    pub kind: String,
    /// `strom.source.topic`.
    pub source_topic: String,
    /// `strom.source.partition`.
    pub source_partition: i32,
    /// `strom.source.offset`.
    pub source_offset: i64,
    /// `strom.agent`.
    pub agent: String,
}

impl DeadLetter {
    /// Reads the headers of a dead-letter message; `None` if it lacks them.
    pub fn from_raw(raw: &RawMessage) -> Option<DeadLetter> {
        let h = |name: &str| {
            raw.headers.iter().rev().find(|(n, _)| n == name).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        Some(DeadLetter {
            key: raw.key.clone(),
            value: raw.value.clone(),
            error: h(ERROR)?,
            kind: h(ERROR_KIND)?,
            source_topic: h(SOURCE_TOPIC)?,
            source_partition: h(SOURCE_PARTITION)?.parse().ok()?,
            source_offset: h(SOURCE_OFFSET)?.parse().ok()?,
            agent: h(AGENT).unwrap_or_default(),
        })
    }
}
