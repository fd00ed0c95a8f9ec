//! processing: every reading on `sensors.raw` (either MQTT form; values as
//! strings, integers or floats; C, F or K; RFC 3339 or epoch timestamps)
//! converted to Celsius with its event time in epoch milliseconds, to
//! `sensors.processed` keyed by sensor number. What cannot be understood
//! goes to `sensors.raw.dlq` with the reason.

use strom_services::{processing, service, topics};

#[tokio::main]
async fn main() -> Result<(), stream_core::Error> {
    let app = service::app("processing", 7003)?;
    processing::normalize(&app, &topics::raw(&app), &topics::processed(&app));
    app.main().await
}
