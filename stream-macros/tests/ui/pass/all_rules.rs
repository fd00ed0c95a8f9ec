//! Every rule on every type it applies to, plain and in an `Option`.
use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use stream_core::{Payload, Record};

#[derive(Record, Serialize, Deserialize)]
#[record(namespace = "all.rules", version = 7)]
struct AllRules {
    #[record(key)]
    #[record(regex = "^[a-z0-9-]+$", len(min = 1, max = 64), non_empty)]
    id: String,
    #[record(range(min = -128, max = 127))]
    i8_: i8,
    #[record(range(min = 0))]
    u16_: u16,
    #[record(range(max = 1_000_000))]
    i32_: i32,
    #[record(min = -5, max = 5)]
    i64_: i64,
    #[record(range(min = 0, max = 18446744073709551615))]
    u64_: u64,
    #[record(range(min = -0.5, max = 0.5))]
    f32_: f32,
    #[record(range(min = -90, max = 60.5), min = -1e3, max = 1.5e3)]
    f64_: f64,
    #[record(range(min = 1, max = 10))]
    maybe_int: Option<u8>,
    #[record(max = 0.25)]
    maybe_float: Option<f64>,
    #[record(len(max = 3), non_empty)]
    list: Vec<u32>,
    #[record(len(min = 0, max = 10))]
    map: HashMap<String, i64>,
    #[record(non_empty)]
    tree: BTreeMap<u8, u8>,
    #[record(regex = r"^\p{Lu}", len(max = 8), non_empty)]
    maybe_text: Option<String>,
    #[record(len(max = 2))]
    maybe_list: Option<Vec<String>>,
}

fn main() {
    let value = AllRules {
        id: "abc-1".into(),
        i8_: -128,
        u16_: 0,
        i32_: 1,
        i64_: 5,
        u64_: u64::MAX,
        f32_: 0.5,
        f64_: 60.5,
        maybe_int: None,
        maybe_float: Some(0.25),
        list: vec![1],
        map: HashMap::new(),
        tree: [(1, 1)].into(),
        maybe_text: Some("Éa".into()),
        maybe_list: None,
    };
    assert!(value.validate().is_ok());
    assert_eq!(value.key().as_deref(), Some("abc-1"));
    assert_eq!(AllRules::NAMESPACE, "all.rules");
    assert_eq!(AllRules::VERSION, 7);
    let f64_rules = AllRules::schema().field("f64_").unwrap().rules;
    assert_eq!(f64_rules, ["range(min = -90, max = 60.5)", "min = -1e3", "max = 1.5e3"]);
}
