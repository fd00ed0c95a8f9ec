//! A record with neither key nor timestamp, and no rules.
use serde::{Deserialize, Serialize};
use stream_core::{Payload, Record};

#[derive(Record, Serialize, Deserialize)]
struct Note {
    text: String,
    pinned: bool,
}

fn main() {
    let note = Note { text: String::new(), pinned: false };
    let none: Option<()> = note.key();
    assert!(none.is_none());
    assert_eq!(note.event_time_ms(), None);
    assert!(note.validate().is_ok());
    assert_eq!(<Note as Record>::NAMESPACE, "Note");
    assert_eq!(<Note as Record>::VERSION, 1);
}
