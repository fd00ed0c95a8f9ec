//! `crate = "..."` for a stream-core re-exported under another path.
mod framework {
    pub use stream_core as core_api;
}

use serde::{Deserialize, Serialize};
use stream_core::{Payload, Record};

#[derive(Record, Serialize, Deserialize)]
#[record(crate = "crate::framework::core_api", namespace = "renamed")]
struct Renamed {
    #[record(key, non_empty)]
    id: String,
}

#[derive(Record, Serialize, Deserialize)]
#[record(crate = "::stream_core")]
struct Absolute {
    #[record(max = 1)]
    n: u8,
}

fn main() {
    assert!(Renamed { id: String::new() }.validate().is_err());
    assert_eq!(Renamed::NAMESPACE, "renamed");
    assert!(Absolute { n: 1 }.validate().is_ok());
}
