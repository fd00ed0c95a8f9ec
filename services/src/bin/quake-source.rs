//! quake-source: EMSC's live earthquake feed (the standing-order websocket,
//! `EMSC_URL`, default `wss://www.seismicportal.eu/standing_order/websocket`)
//! to `quakes.raw`, one record per new or revised event, keyed by its `unid`.
//!
//! A message that is not an earthquake EMSC could have sent (not JSON, no
//! `unid`, a latitude of 91, ...), a binary frame that is not UTF-8, or a
//! frame over 1 MiB goes to `quakes.raw.dlq` with the reason. The connection
//! is pinged, and made again whenever it drops, forever (with a backoff);
//! what EMSC sent while it was down is not sent again.

use stream_core::connect::websocket::WebSocketSource;
use strom_services::quake::source::{self, SOURCE_NAME};
use strom_services::service;

#[tokio::main]
async fn main() -> Result<(), stream_core::Error> {
    let app = service::app("quake-source", 7101)?;
    source::source(&app, WebSocketSource::new(&app, &source::emsc_url(), SOURCE_NAME)?);
    app.main().await
}
