//! Averages sensor readings per 10-second window of event time.

#[tokio::main]
async fn main() -> Result<(), stream_core::Error> {
    let app = stream_core::App::builder("windowed-average").broker("memory://").env()?.build()?;
    strom_examples::windowed_average::build(&app);
    app.main().await
}
