//! `windowed_average`: the average of each sensor's readings per tumbling
//! window of event time, emitted when the window closes.
//!
//! Consumes `readings.in` (4 partitions): JSON readings
//! `{"sensor": "s1", "value": 21.5, "time": <epoch ms>}` keyed by sensor. Each
//! reading is added to the sensor's window of [`WINDOW`] (event time from its
//! `time` field); when the watermark passes a window's end plus [`GRACE`], or
//! the partition has been quiet for [`IDLE`], the window closes and
//! `{"sensor", "start", "end", "average", "count"}` goes to `averages.out`
//! keyed by sensor. Readings too late for their window are counted in
//! `strom_table_late_events_total`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use stream_core::prelude::*;
use stream_core::table::window::{WindowedTable, Windows};

/// The window length.
pub const WINDOW: Duration = Duration::from_secs(10);
/// How late a reading may be and still count.
pub const GRACE: Duration = Duration::from_secs(2);
/// How long a partition may be quiet before its windows close anyway.
pub const IDLE: Duration = Duration::from_secs(5);

/// A sensor reading.
#[derive(Record, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Reading {
    /// The sensor.
    #[record(key, non_empty)]
    pub sensor: String,
    /// The value.
    #[record(range(min = -1000.0, max = 1000.0))]
    pub value: f64,
    /// When it was measured, epoch milliseconds.
    #[record(timestamp)]
    pub time: i64,
}

/// A sensor's running sum in one window.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq)]
pub struct Sum {
    /// The sum of the values.
    pub sum: f64,
    /// How many values.
    pub count: u64,
}

impl Payload for Sum {
    type Codec = stream_core::codec::Json;
}

/// A closed window's average.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Average {
    /// The sensor.
    pub sensor: String,
    /// The window's first millisecond.
    pub start: i64,
    /// The first millisecond after the window.
    pub end: i64,
    /// The average of the window's values.
    pub average: f64,
    /// How many values it averages.
    pub count: u64,
}

impl Payload for Average {
    type Codec = stream_core::codec::Json;
}

/// The topics and table of the example.
#[derive(Debug, Clone)]
pub struct WindowedAverage {
    /// `readings.in`.
    pub input: Topic<String, Reading>,
    /// `averages.out`.
    pub output: Topic<String, Average>,
    /// The windows.
    pub sums: WindowedTable<String, Sum>,
}

/// Declares the topics, the windowed table and the agent.
pub fn build(app: &App) -> WindowedAverage {
    let input = app.topic::<String, Reading>("readings.in").partitions(4);
    let output = app.topic::<String, Average>("averages.out").partitions(4);
    let out = output.clone();
    let sums = app
        .windowed_table::<String, Sum>("sums", &input, Windows::tumbling(WINDOW))
        .grace(GRACE)
        .idle_close(IDLE)
        .on_window_close(move |sensor, window, sum| {
            let out = out.clone();
            async move {
                let average = sum.sum / sum.count.max(1) as f64;
                let closed = Average { sensor, start: window.start, end: window.end, average, count: sum.count };
                out.send(&closed.sensor, &closed).await?;
                Ok(())
            }
        });
    let table = sums.clone();
    app.agent("average", &input, move |mut readings| {
        let sums = table.clone();
        async move {
            while let Some(r) = readings.next().await {
                let reading = r.value();
                sums.at(&r)?
                    .update(&reading.sensor, |s| {
                        let s = s.unwrap_or_default();
                        Sum { sum: s.sum + reading.value, count: s.count + 1 }
                    })
                    .await?;
            }
            Ok(())
        }
    });
    WindowedAverage { input, output, sums }
}
