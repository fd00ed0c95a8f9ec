//! sensor-simulator: temperature sensors publishing to MQTT, in the seed's
//! form (`/sensor<N>/temp`) and the richer one (`sensors/<N>/temperature`).
//!
//! `MQTT_URL`, `SIMULATOR_SENSORS` (10), `SIMULATOR_RATE` (1 reading per
//! sensor per second), `SIMULATOR_LIMIT` (readings per sensor, default no
//! end), `SIMULATOR_CLIENT_ID`, `MQTT_TOPIC_PREFIX`; `/metrics` on
//! `STROM_WEB_PORT` (7001). It sends nothing to Kafka: `STROM_BROKER`
//! defaults to `memory://`.

use stream_core::App;
use strom_services::simulator::{self, Config};

#[tokio::main]
async fn main() -> Result<(), stream_core::Error> {
    let app = App::builder("sensor-simulator").broker("memory://").web_port(7001).env()?.build()?;
    simulator::serve(&app, Config::from_env()?);
    app.main().await
}
