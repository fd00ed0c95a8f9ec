//! The services of the earthquake pipeline (the live map of EMSC's events):
//!
//! ```text
//! EMSC websocket ─▶ quake-source ─▶ quakes.raw ─┬▶ quake-loader ─▶ Postgres table quakes
//!                       │                       └▶ quake-map (every replica holds every event) ─▶ map page, GeoJSON API, SSE
//!                       └▶ quakes.raw.dlq (malformed messages, with the reason)
//! ```
//!
//! The record on `quakes.raw` is [`records::Quake`].

pub mod emsc;
pub mod loader;
pub mod map;
pub mod page;
pub mod records;
pub mod source;

use stream_core::{App, Topic};

use records::{PARTITIONS, Quake, RAW};

/// `quakes.raw`: every valid EMSC message, as a [`Quake`] keyed by its `unid`.
pub fn raw(app: &App) -> Topic<String, Quake> {
    app.topic(RAW).partitions(PARTITIONS)
}

/// `quakes.raw.dlq`: the frames quake-source could not read, as received,
/// with the reason in the `strom.error` header.
pub fn raw_dead_letters(app: &App) -> Topic<String, Vec<u8>> {
    app.topic(&stream_core::dlq::dlq_topic(RAW)).partitions(PARTITIONS)
}
