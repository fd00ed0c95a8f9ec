//! Records declared by a `macro_rules!` macro: the generated code must not
//! depend on the hygiene of the tokens it is given.
use serde::{Deserialize, Serialize};
use stream_core::{Payload, Record};

fn positive(value: &u32) -> Result<(), String> {
    if *value > 0 { Ok(()) } else { Err("must be positive".to_owned()) }
}

fn whole<T>(_: &T) -> Result<(), String> {
    Err("record-level rule ran".to_owned())
}

macro_rules! record {
    ($name:ident { $($field:ident : $ty:ty = $rule:meta),* $(,)? }) => {
        #[derive(Record, Serialize, Deserialize)]
        #[record(validate = whole)]
        struct $name {
            #[record(key, range(min = 1), validate = positive)]
            id: u32,
            #[record(timestamp)]
            at: i64,
            $(#[record($rule)] $field: $ty,)*
        }
    };
}

record!(Generated { name: String = len(max = 3), level: Option<f64> = range(min = 0.0, max = 1.0) });

fn main() {
    let value = Generated { id: 0, at: 9, name: "long".into(), level: Some(2.0) };
    assert_eq!(value.key(), Some(0));
    assert_eq!(value.event_time_ms(), Some(9));
    let fields: Vec<_> = value.validate().unwrap_err().violations.iter().map(|v| v.field).collect();
    assert_eq!(fields, ["id", "id", "name", "level", "*"]);
    let schema = Generated::schema();
    assert_eq!(schema.fields[3].ty, "Option<f64>");
    assert_eq!(schema.fields[3].rules, ["range(min = 0.0, max = 1.0)"]);
}
