//! Greets names; on `memory://` (the default) it feeds itself a name a second.

use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), stream_core::Error> {
    let app = stream_core::App::builder("hello").broker("memory://").env()?.build()?;
    let every = std::env::var("HELLO_EVERY_MS").ok().and_then(|ms| ms.parse().ok()).unwrap_or(1000);
    strom_examples::hello::build(&app, (every > 0).then(|| Duration::from_millis(every)));
    app.main().await
}
