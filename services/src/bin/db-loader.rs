//! db-loader: reads `sensors.processed` and `sensors.averages` and loads every
//! record into the Postgres tables `temperature` and `average` (DATABASE_URL),
//! in batches, one row per reading however often it is replayed.

use stream_core::prelude::*;
use strom_services::loader::{self, LoaderMetrics};
use strom_services::records::{self, Average, Temperature};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    stream_core::init_logging();
    let app = App::builder("db-loader").web_port(7005).env()?.build()?;
    let processed = app.topic::<u32, Temperature>(records::PROCESSED).partitions(records::PARTITIONS);
    let averages = app.topic::<u32, Average>(records::AVERAGES).partitions(records::PARTITIONS);

    // The tables, created (with the database) when missing; waits for Postgres.
    let db = loader::database(&app, &loader::database_url())?;
    db.ensure_schema(loader::SCHEMA).await?;

    let metrics = LoaderMetrics::register(&app);
    loader::load(&app, "load-temperature", &processed, &db, &metrics);
    loader::load(&app, "load-average", &averages, &db, &metrics);
    app.main().await?;
    Ok(())
}
