//! aggregation: the average of each sensor's last readings.

use stream_core::Agent;
use stream_core::prelude::*;

use crate::records::{Average, Temperature};

/// How many readings an average spans.
pub const LAST: usize = 10;

/// The agent `average`: for each reading of `processed`, the average of its
/// sensor's last [`LAST`] values (a count window, the table `last-10`) on
/// `averages`.
pub fn average(app: &App, processed: &Topic<u32, Temperature>, averages: &Topic<u32, Average>) -> Agent {
    let last_10 = app.count_windows::<u32, f64>("last-10", processed, LAST);
    let averages = averages.clone();
    app.agent("average", processed, move |mut readings| {
        let (last_10, averages) = (last_10.clone(), averages.clone());
        async move {
            while let Some(reading) = readings.next().await {
                let t = reading.value();
                let values = last_10.push(&reading, &t.sensor_num, t.value).await?;
                averages.send_record(&Average::of(t, &values)).await?;
            }
            Ok(())
        }
    })
}
