//! db-loader: reads `sensors.processed` and `sensors.averages` and loads every
//! record into the Postgres tables `temperature` and `average` (DATABASE_URL),
//! in batches, one row per reading however often it is replayed.

use strom_services::{loader, service};

#[tokio::main]
async fn main() -> Result<(), stream_core::BoxError> {
    let app = service::app("db-loader", 7005)?;
    // The database and tables are created (when missing) before the first rows.
    let db = loader::postgres(&app, &loader::database_url()).await?;
    loader::load_all(&app, &db);
    app.main().await?;
    Ok(())
}
