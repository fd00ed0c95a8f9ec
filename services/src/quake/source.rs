//! What quake-source does with a frame of EMSC's websocket: read it as a
//! [`Quake`] and send it to `quakes.raw` keyed by its `unid`, or have the
//! websocket source dead-letter it to `quakes.raw.dlq` with the reason.

use stream_core::App;
use stream_core::Rejected;
use stream_core::connect::websocket::{WebSocketSource, WsFrame};
use stream_core::metrics::prometheus_client::metrics::counter::Counter;
use stream_core::metrics::prometheus_client::metrics::family::Family;

use super::records::Quake;
use super::{raw, raw_dead_letters};
use crate::service::env_or;

/// EMSC's standing-order websocket: every new and revised event, live.
pub const DEFAULT_EMSC_URL: &str = "wss://www.seismicportal.eu/standing_order/websocket";
/// Larger frames are dead-lettered without being read (EMSC's are about 1 KiB).
pub const MAX_FRAME: usize = 1024 * 1024;
/// The websocket source's name: the `source` label of its metrics, the
/// `strom.agent` of its dead letters.
pub const SOURCE_NAME: &str = "emsc";

/// `strom_quake_events_total{action}`: the events sent to `quakes.raw`.
type Events = Family<Vec<(String, String)>, Counter>;

/// The websocket URL: `EMSC_URL`, default [`DEFAULT_EMSC_URL`].
pub fn emsc_url() -> String {
    env_or("EMSC_URL", DEFAULT_EMSC_URL)
}

/// quake-source's task `websocket`: every frame `ws` receives read with
/// [`Quake::from_emsc`]; a quake to `quakes.raw` keyed by its `unid`
/// (counted in `strom_quake_events_total{action}`, logged with `unid` and
/// `action`), anything else to `quakes.raw.dlq` with the reason, once.
/// Frames over [`MAX_FRAME`] and binary frames that are not UTF-8 are
/// dead-lettered by the source itself.
pub fn source(app: &App, ws: WebSocketSource) {
    let raw = raw(app);
    let events: Events =
        app.metrics().register_once("quake_events", "EMSC events sent to quakes.raw, by action", Events::default);
    ws.dead_letters(&raw_dead_letters(app)).max_frame(MAX_FRAME).task(app, "websocket", move |frame: WsFrame| {
        let (raw, events) = (raw.clone(), events.clone());
        async move {
            let quake = Quake::from_emsc(&frame.text).map_err(|e| Rejected::new(e.to_string()))?;
            let receipt = raw.send_record(&quake).await?;
            let action = quake.action.as_str();
            events.get_or_create(&vec![("action".to_owned(), action.to_owned())]).inc();
            tracing::info!(unid = %quake.unid, action, mag = quake.mag, region = quake.flynn_region.as_deref().unwrap_or(""),
                lastupdate = %super::records::rfc3339(&quake.lastupdate), connection = frame.connection, "EMSC event");
            Ok(vec![receipt])
        }
    });
}
