//! api-gateway: the seed's REST API over the tables db-loader writes
//! (`/temperature`, `/average`, `/temperature_latest`, `/openapi.json`,
//! `/docs`), served on the worker's port 8007 beside `/metrics` and `/health`.

use stream_core::prelude::*;
use strom_services::api::{self, Source};
use strom_services::loader;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    stream_core::init_logging();
    // It reads Postgres only: no broker.
    let app = App::builder("api-gateway").broker("memory://").web_port(8007).env()?.build()?;
    app.routes(api::router(&app, Source::Postgres(&loader::database_url()))?);
    app.main().await?;
    Ok(())
}
