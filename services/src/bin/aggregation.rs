//! aggregation: for every reading on `sensors.processed`, the average of its
//! sensor's last 10 values (a count-window table kept under
//! `STROM_STATE_DIR`, backed by a changelog) to `sensors.averages`, keyed by
//! sensor number.

use strom_services::{aggregation, service, topics};

#[tokio::main]
async fn main() -> Result<(), stream_core::Error> {
    let app = service::app("aggregation", 7004)?;
    aggregation::average(&app, &topics::processed(&app), &topics::averages(&app));
    app.main().await
}
