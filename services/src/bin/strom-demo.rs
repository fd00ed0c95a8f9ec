//! strom-demo: both systems in one process, with nothing outside it by
//! default: the sensor pipeline (`memory://` broker, an MQTT broker in the
//! process, an embedded database instead of Postgres) and the earthquake
//! pipeline (EMSC live, or a recording with `QUAKE_REPLAY=<file>`, and the
//! live map). Prints where the map, the API docs and the metrics are;
//! Ctrl-C stops it. See `strom_services::demo`.

use strom_services::demo::Demo;

#[tokio::main]
async fn main() -> Result<(), stream_core::BoxError> {
    let demo = Demo::start().await?;
    println!("{}", demo.banner());
    demo.run_until_signal().await?;
    Ok(())
}
