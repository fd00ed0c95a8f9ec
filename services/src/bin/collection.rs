//! collection: every MQTT message on `sensors/+/temperature` and `/+/temp`,
//! as received, to `sensors.raw` (keyed by its MQTT topic).
//!
//! At-least-once: a persistent session named `MQTT_CLIENT_ID` (default
//! `collection`; one per replica), replicas sharing the load in the shared
//! subscription `collection`, and a message acknowledged to MQTT only once
//! Kafka has it. A payload that is not UTF-8 or over 16 KiB goes to
//! `sensors.raw.dlq` with the reason.

use stream_core::connect::mqtt::{MqttMessage, MqttSource};
use strom_services::collection::{self, MAX_PAYLOAD, SHARE_GROUP};
use strom_services::records::RawReading;
use strom_services::{service, topics};

#[tokio::main]
async fn main() -> Result<(), stream_core::Error> {
    let app = service::app("collection", 7002)?;
    let raw = topics::raw(&app);
    let client_id = service::env_or("MQTT_CLIENT_ID", "collection");
    let [richer_form, seed_form] = collection::filters();
    MqttSource::from_env(&app, &client_id)?
        .subscribe(richer_form)
        .subscribe(seed_form)
        .shared(SHARE_GROUP)
        .dead_letters(&topics::raw_dead_letters(&app))
        .max_payload(MAX_PAYLOAD)
        .task(&app, "mqtt", move |msg: MqttMessage| {
            let raw = raw.clone();
            async move { Ok(vec![raw.send_record(&RawReading::from_mqtt(&msg)?).await?]) }
        });
    app.main().await
}
