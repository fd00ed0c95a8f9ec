//! What collection does with an MQTT message: keep it as it came, as a
//! [`RawReading`] keyed by its MQTT topic.

use stream_core::App;
use stream_core::connect::mqtt::{MqttMessage, MqttSource};

use crate::records::RawReading;
use crate::service::env_or;
use crate::topics;

/// The MQTT topic filters collection subscribes to: the richer form and the
/// seed's (README, "The sensor pipeline's services").
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

/// collection's task `mqtt`: every message `source` receives on [`filters`]
/// to `sensors.raw`, as received; a payload that is not UTF-8 or over
/// [`MAX_PAYLOAD`] to `sensors.raw.dlq` with the reason.
pub fn collect(app: &App, source: MqttSource) {
    let raw = topics::raw(app);
    let [richer_form, seed_form] = filters();
    source
        .subscribe(richer_form)
        .subscribe(seed_form)
        .dead_letters(&topics::raw_dead_letters(app))
        .max_payload(MAX_PAYLOAD)
        .task(app, "mqtt", move |msg: MqttMessage| {
            let raw = raw.clone();
            async move { Ok(vec![raw.send_record(&RawReading::from_mqtt(&msg)?).await?]) }
        });
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
