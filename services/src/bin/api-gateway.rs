//! api-gateway: the seed's REST API over the tables db-loader writes
//! (`/temperature`, `/average`, `/temperature_latest`, `/openapi.json`,
//! `/docs`), served on the worker's port 8007 beside `/metrics` and `/health`.

use stream_core::prelude::*;
use strom_services::{api, loader};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    stream_core::init_logging();
    let app = App::builder("api-gateway").web_port(8007).env()?.build()?;
    app.routes(api::router(&app, &loader::database_url())?);
    app.main().await?;
    Ok(())
}
