//! Accepts payments and reports the bad ones from the dead-letter topic. On
//! `memory://` (the default) it sends itself a few good and bad payments first.

use std::time::Duration;

use bytes::Bytes;

#[tokio::main]
async fn main() -> Result<(), stream_core::Error> {
    let app = stream_core::App::builder("dlq").broker("memory://").env()?.build()?;
    strom_examples::dlq::build(&app);
    if app.memory_broker().is_none() || std::env::args().len() > 1 {
        return app.main().await;
    }
    // The embedded demo: run, feed it the sample, show what happened, stop.
    stream_core::init_logging();
    let worker = app.start().await?;
    let raw = app.topic::<(), Bytes>("payments");
    for payment in strom_examples::dlq::SAMPLE {
        raw.send(None, &Bytes::from_static(payment.as_bytes())).await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    worker.stop().await
}
