//! `dlq`: bad input is handled, not fatal. Payments that do not decode or break
//! their record's rules go to `payments.dlq` with the reason; a second agent
//! reads the dead letters and reports them, and good payments flow on.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use stream_core::dlq::{ERROR, ERROR_KIND, SOURCE_OFFSET};
use stream_core::prelude::*;

/// A payment.
#[derive(Record, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[record(namespace = "examples.payment")]
pub struct Payment {
    /// The account paying.
    #[record(key, len(min = 1, max = 32))]
    pub account: String,
    /// The amount, in cents.
    #[record(range(min = 1, max = 1_000_000))]
    pub cents: u64,
}

/// The topics of the example.
#[derive(Debug, Clone)]
pub struct Dlq {
    /// Incoming payments.
    pub payments: Topic<String, Payment>,
    /// Accepted payments.
    pub accepted: Topic<String, Payment>,
    /// Dead letters, as the reporting agent reads them.
    pub dead_letters: Topic<Bytes, Bytes>,
}

/// Declares the `accept` and `report-dead-letters` agents.
pub fn build(app: &App) -> Dlq {
    let payments = app.topic::<String, Payment>("payments").partitions(2);
    let accepted = app.topic::<String, Payment>("payments.accepted");
    let dead_letters = app.topic::<Bytes, Bytes>("payments.dlq").partitions(2);

    let out = accepted.clone();
    app.agent("accept", &payments, move |mut payments| {
        let out = out.clone();
        async move {
            while let Some(payment) = payments.next().await {
                // Keyed by the record's `#[record(key)]` field, the account.
                out.send_record(payment.value()).await?;
            }
            Ok(())
        }
    });

    app.agent("report-dead-letters", &dead_letters, |mut letters| async move {
        while let Some(letter) = letters.next().await {
            let text = |name| letter.header(name).map(String::from_utf8_lossy).unwrap_or_default();
            println!("rejected payment at offset {} ({}): {}", text(SOURCE_OFFSET), text(ERROR_KIND), text(ERROR));
        }
        Ok(())
    });
    Dlq { payments, accepted, dead_letters }
}

/// Some good and some bad payments, as raw JSON.
pub const SAMPLE: [&str; 5] = [
    r#"{"account": "alice", "cents": 1250}"#,
    r#"{"account": "bob", "cents": "twelve"}"#,
    r#"{"account": "carol", "cents": 0}"#,
    r#"not even json"#,
    r#"{"account": "dave", "cents": 99}"#,
];
