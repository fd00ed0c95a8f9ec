//! Publishing to an MQTT broker as a sensor does, with a real client.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use stream_core::connect::mqtt::client_options;
use stream_core::connect::mqtt::rumqttc::{AsyncClient, Event, Packet, QoS};

/// Publishes to `url` (`mqtt://host:port`) with QoS 1 and waits for the
/// broker's acknowledgements.
pub(crate) async fn publish(url: &str, messages: &[(String, Vec<u8>)]) {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let options = client_options(url, &format!("strom-test-pub-{nanos:x}")).unwrap();
    let (client, mut events) = AsyncClient::new(options, messages.len() + 10);
    for (topic, payload) in messages {
        client.publish(topic.clone(), QoS::AtLeastOnce, false, payload.clone()).await.unwrap();
    }
    let mut acked = 0;
    tokio::time::timeout(Duration::from_secs(60), async {
        while acked < messages.len() {
            if let Event::Incoming(Packet::PubAck(_)) = events.poll().await.unwrap() {
                acked += 1;
            }
        }
    })
    .await
    .expect("the MQTT broker acknowledges what is published");
    let _ = client.disconnect().await;
}
