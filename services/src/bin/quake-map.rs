//! quake-map: the live earthquake map. Reads every event of `quakes.raw`
//! (each replica all of them, at their newest version) and serves, on port
//! 8080, the map page (`/`), the events as GeoJSON (`/api/quakes`) and each
//! create or update as it arrives (`/api/quakes/stream`, server-sent
//! events). Run as many replicas as you like behind a load balancer.
//!
//! `MAP_TILE_URL` and `MAP_TILE_ATTRIBUTION` choose the map's tiles.

use stream_core::TableStore;
use strom_services::quake::{self, map, page::PageSettings};
use strom_services::service;

#[tokio::main]
async fn main() -> Result<(), stream_core::Error> {
    // A replica holds nothing of its own: it rebuilds from the topic at start.
    let app = service::app_with("quake-map", 8080, |b| b.table_store(TableStore::Memory))?;
    map::serve(&app, &quake::raw(&app), PageSettings::from_env());
    app.main().await
}
