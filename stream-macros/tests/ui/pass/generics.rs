//! Generic records: the struct's own bounds make the impls hold.
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use stream_core::{Payload, Record};

#[derive(Record, Serialize, Deserialize)]
#[serde(bound = "")]
struct Keyed<K, V>
where
    K: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    #[record(key)]
    key: K,
    #[record(len(max = 2))]
    values: Vec<V>,
}

#[derive(Record, Serialize, Deserialize)]
struct Timed<T: stream_core::record::EventTime + Send + Sync + 'static + Serialize + DeserializeOwned> {
    #[record(timestamp)]
    #[serde(bound = "")]
    at: T,
}

fn main() {
    let keyed = Keyed { key: "k".to_owned(), values: vec![1, 2, 3] };
    assert_eq!(keyed.key().as_deref(), Some("k"));
    assert_eq!(keyed.validate().unwrap_err().violations[0].field, "values");
    assert_eq!(Keyed::<u8, u8>::schema().fields[1].ty, "Vec<V>");
    assert_eq!(Timed { at: 5_i64 }.event_time_ms(), Some(5));
    assert_eq!(Timed { at: 1.5_f64 }.event_time_ms(), Some(1_500));
}
