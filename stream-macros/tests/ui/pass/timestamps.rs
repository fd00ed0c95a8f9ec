//! Every kind of event time.
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use stream_core::{Payload, Record};

#[derive(Record, Serialize, Deserialize)]
struct Seconds {
    #[record(timestamp)]
    ts: f64,
}

#[derive(Record, Serialize, Deserialize)]
struct Millis {
    #[record(timestamp, range(min = 0))]
    ts: u64,
}

#[derive(Record, Serialize, Deserialize)]
struct Signed {
    #[record(key, timestamp)]
    ts: i64,
}

#[derive(Record, Serialize, Deserialize)]
struct System {
    #[record(timestamp)]
    at: SystemTime,
}

#[derive(Record, Serialize, Deserialize)]
struct Chrono {
    #[record(timestamp)]
    at: chrono::DateTime<chrono::Utc>,
}

#[derive(Record, Serialize, Deserialize)]
struct Maybe {
    #[record(timestamp)]
    at: Option<std::time::SystemTime>,
}

fn main() {
    assert_eq!(Seconds { ts: 1_700_000_000.5 }.event_time_ms(), Some(1_700_000_000_500));
    assert_eq!(Millis { ts: 7 }.event_time_ms(), Some(7));
    let signed = Signed { ts: -3 };
    assert_eq!((signed.key(), signed.event_time_ms()), (Some(-3), Some(-3)));
    let field = Signed::schema().fields[0];
    assert!(field.key && field.timestamp);
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(2);
    assert_eq!(System { at }.event_time_ms(), Some(2_000));
    let at = chrono::DateTime::from_timestamp_millis(1_234).unwrap();
    assert_eq!(Chrono { at }.event_time_ms(), Some(1_234));
    assert_eq!(Maybe { at: None }.event_time_ms(), None);
    assert_eq!(Chrono::schema().fields[0].ty, "chrono::DateTime<chrono::Utc>");
    assert_eq!(Maybe::schema().fields[0].ty, "Option<std::time::SystemTime>");
}
