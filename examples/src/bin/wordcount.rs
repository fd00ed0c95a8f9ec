//! Counts words from `words.in` into the table `counts` and `words.out`.

#[tokio::main]
async fn main() -> Result<(), stream_core::Error> {
    let app = stream_core::App::builder("wordcount").broker("memory://").env()?.build()?;
    strom_examples::wordcount::build(&app);
    app.main().await
}
