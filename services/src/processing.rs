//! processing: every raw reading, parsed and converted to Celsius
//! ([`sensors::parse`]).

use stream_core::Agent;
use stream_core::prelude::*;

use crate::records::{RawReading, Temperature};
use crate::sensors;

/// The agent `normalize`: each reading of `raw` parsed into a
/// [`Temperature`] on `processed`. A reading that cannot be understood is
/// [`Rejected`]: it goes to `sensors.raw.dlq` at once, with the reason (it
/// would not get better by retrying). Any other failure (sending) is retried
/// first, by the default policy.
pub fn normalize(app: &App, raw: &Topic<String, RawReading>, processed: &Topic<u32, Temperature>) -> Agent {
    let processed = processed.clone();
    app.agent("normalize", raw, move |mut readings| {
        let processed = processed.clone();
        async move {
            while let Some(raw) = readings.next().await {
                let reading = sensors::parse(raw.value()).map_err(|e| Rejected::new(e.to_string()))?;
                processed.send_record(&reading).await?;
            }
            Ok(())
        }
    })
}
