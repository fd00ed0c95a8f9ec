//! Relays `relay.in` to `relay.out`, adding `"relayed": true`.

#[tokio::main]
async fn main() -> Result<(), stream_core::Error> {
    let app = stream_core::App::builder("relay").broker("memory://").env()?.build()?;
    strom_examples::relay::build(&app);
    app.main().await
}
