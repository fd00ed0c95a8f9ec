//! Wire names follow serde: `rename` beats `rename_all`.
use serde::{Deserialize, Serialize};
use stream_core::{Payload, Record};

#[derive(Record, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Order {
    #[record(key, non_empty)]
    order_id: String,
    #[serde(rename = "qty")]
    #[record(min = 1)]
    quantity_ordered: u32,
    #[serde(rename(serialize = "out", deserialize = "in"))]
    #[record(max = 1)]
    both_ways: u8,
    #[record(non_empty)]
    r#type: String,
}

#[derive(Record, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Kebab {
    #[record(non_empty)]
    some_field: String,
}

fn main() {
    let order = Order { order_id: String::new(), quantity_ordered: 0, both_ways: 2, r#type: String::new() };
    let err = order.validate().unwrap_err();
    let fields: Vec<_> = err.violations.iter().map(|v| v.field).collect();
    assert_eq!(fields, ["OrderId", "qty", "in", "Type"]);
    let names: Vec<_> = Order::schema().fields.iter().map(|f| f.name).collect();
    assert_eq!(names, ["OrderId", "qty", "in", "Type"]);
    assert_eq!(Kebab::schema().fields[0].name, "some-field");
}
