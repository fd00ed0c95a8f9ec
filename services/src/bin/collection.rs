//! collection: every MQTT message on `sensors/+/temperature` and `/+/temp`,
//! as received, to `sensors.raw` (keyed by its MQTT topic).
//!
//! At-least-once: a persistent session named `MQTT_CLIENT_ID` (default
//! `collection`; one per replica), replicas sharing the load in the shared
//! subscription `collection`, and a message acknowledged to MQTT only once
//! Kafka has it. A payload that is not UTF-8 or over 16 KiB goes to
//! `sensors.raw.dlq` with the reason.

use stream_core::connect::mqtt::MqttSource;
use strom_services::collection::{self, SHARE_GROUP};
use strom_services::service;

#[tokio::main]
async fn main() -> Result<(), stream_core::Error> {
    let app = service::app("collection", 7002)?;
    let client_id = service::env_or("MQTT_CLIENT_ID", "collection");
    collection::collect(&app, MqttSource::from_env(&app, &client_id)?.shared(SHARE_GROUP));
    app.main().await
}
