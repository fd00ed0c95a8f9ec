//! quake-loader: reads `quakes.raw` and keeps every earthquake as one row of
//! the Postgres table `quakes` (DATABASE_URL), keyed by its `unid`, at its
//! latest revision: a stale update or a replay changes nothing.

use strom_services::{loader, quake, service};

#[tokio::main]
async fn main() -> Result<(), stream_core::BoxError> {
    let app = service::app("quake-loader", 7102)?;
    // The database and table are created (when missing) before the first rows.
    let db = quake::loader::postgres(&app, &loader::database_url()).await?;
    quake::loader::load(&app, &quake::raw(&app), &db);
    app.main().await?;
    Ok(())
}
