//! What collection does with an MQTT message: keep it as it came, as a
//! [`RawReading`] keyed by its MQTT topic.

use stream_core::connect::mqtt::MqttMessage;

use crate::records::RawReading;
use crate::service::env_or;

/// The MQTT topic filters collection subscribes to: the richer form and the
/// seed's (DESIGN.md, "MQTT input").
pub const FILTERS: [&str; 2] = ["sensors/+/temperature", "/+/temp"];
/// The shared-subscription group of collection's replicas.
pub const SHARE_GROUP: &str = "collection";
/// Larger payloads are dead-lettered without being looked at.
pub const MAX_PAYLOAD: usize = 16 * 1024;

/// The topic filters, each after `MQTT_TOPIC_PREFIX` (default none), so
/// that several deployments (or tests) can share one MQTT broker.
pub fn filters() -> [String; 2] {
    let prefix = env_or("MQTT_TOPIC_PREFIX", "");
    FILTERS.map(|f| format!("{prefix}{f}"))
}

/// A payload that is not UTF-8 text.
#[derive(Debug, thiserror::Error)]
#[error("payload on {topic:?} is not UTF-8 text: {source}")]
pub struct NotText {
    topic: String,
    source: std::string::FromUtf8Error,
}

impl RawReading {
    /// The message as received; an error if its payload is not UTF-8.
    pub fn from_mqtt(msg: &MqttMessage) -> Result<RawReading, NotText> {
        let payload =
            String::from_utf8(msg.payload.to_vec()).map_err(|source| NotText { topic: msg.topic.clone(), source })?;
        Ok(RawReading { mqtt_topic: msg.topic.clone(), payload, received_ms: msg.received_ms })
    }
}
