//! `#[derive(Record)]` for Strom.
//!
//! Use it through `stream_core` (the `derive` feature, on by default), which
//! re-exports it next to the `Record` trait:
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use stream_core::{Payload, Record};
//!
//! fn even(value: &u32) -> Result<(), String> {
//!     if value % 2 == 0 { Ok(()) } else { Err(format!("{value} is odd")) }
//! }
//!
//! /// A temperature reading.
//! #[derive(Record, Serialize, Deserialize, Clone, Debug)]
//! #[serde(rename_all = "camelCase")]
//! #[record(namespace = "sensors.reading", version = 2)]
//! struct Reading {
//!     /// Which sensor sent it.
//!     #[record(key, regex = "^[a-z]+-[0-9]+$")]
//!     sensor_id: String,
//!     /// When it was measured, in epoch milliseconds.
//!     #[record(timestamp)]
//!     ts_ms: i64,
//!     #[record(range(min = -90.0, max = 60.0))]
//!     celsius: f64,
//!     #[record(len(max = 8))]
//!     tags: Vec<String>,
//!     #[record(min = 0, validate = even)]
//!     batch: u32,
//! }
//!
//! let reading = Reading {
//!     sensor_id: "roof-1".into(),
//!     ts_ms: 1_700_000_000_000,
//!     celsius: 21.5,
//!     tags: vec![],
//!     batch: 4,
//! };
//! assert!(reading.validate().is_ok());
//! assert_eq!(reading.key().as_deref(), Some("roof-1"));
//! assert_eq!(reading.event_time_ms(), Some(1_700_000_000_000));
//!
//! let bad = Reading { sensor_id: "Roof".into(), celsius: 99.0, ..reading };
//! let err = bad.validate().unwrap_err();
//! assert_eq!(err.violations[0].field, "sensorId"); // the wire name
//! assert_eq!(err.violations[1].message, "out of range: must satisfy range(min = -90.0, max = 60.0)");
//!
//! let schema = Reading::schema();
//! assert_eq!((schema.namespace, schema.version), ("sensors.reading", 2));
//! assert_eq!(schema.field("celsius").unwrap().rules, ["range(min = -90.0, max = 60.0)"]);
//! assert_eq!(schema.field("sensorId").unwrap().doc, "Which sensor sent it.");
//! ```
//!
//! # What it generates
//!
//! For a struct with named fields (not an enum, union, tuple or unit struct):
//!
//! - `Payload` with the JSON codec, a `validate` that checks every rule and
//!   reports *every* violation (field order, the record-level rule last), and an
//!   `event_time_ms` that reads the `timestamp` field (`None` without one);
//! - `Record` with `Key` = the type of the `key` field (`()` without one, then
//!   `key()` is `None`), `NAMESPACE`, `VERSION` and a static `Schema` listing
//!   every field with its wire name, type, role, rules and doc comment.
//!
//! Generic structs are supported; the impls carry the struct's own bounds, so
//! the type parameters need `Serialize + DeserializeOwned + Send + Sync +
//! 'static` (and `Clone` for a key) on the struct.
//!
//! # Struct attributes
//!
//! | attribute | meaning |
//! |---|---|
//! | `#[record(namespace = "a.b")]` | the namespace; default: the type name |
//! | `#[record(version = 2)]` | the schema version, 1 or more; default 1 |
//! | `#[record(validate = path::to_fn)]` | a record-level rule `fn(&Self) -> Result<(), E: Display>`, reported for field `*` |
//! | `#[record(crate = "path::to::stream_core")]` | where stream-core is, when it is not `::stream_core` |
//!
//! # Field attributes
//!
//! | attribute | meaning |
//! |---|---|
//! | `key` | the record's key (at most one field) |
//! | `timestamp` | the event time (at most one field); the type must implement `EventTime`: `i64`/`u64` epoch milliseconds, `f64` epoch seconds, `SystemTime`, chrono's `DateTime`, or an `Option` of these |
//! | `range(min = -90.0, max = 60.0)` | numbers within bounds (either bound may be left out); integer or float literals |
//! | `min = 0`, `max = 9.5` | one bound alone |
//! | `len(min = 1, max = 64)` | the length of a string (in characters) or collection (either bound may be left out) |
//! | `non_empty` | a string or collection with at least one element; an empty `Option` counts as empty |
//! | `regex = "^[a-z]+$"` | text matching the pattern, checked when the macro runs |
//! | `validate = path::to_fn` | a custom rule `fn(&FieldType) -> Result<(), E: Display>` |
//!
//! Several keys can share one attribute (`#[record(key, len(max = 64))]`) or be
//! spread over several. Rules on an `Option` field check the value when there is
//! one (except `non_empty`). Wire names follow `#[serde(rename = "...")]` and
//! `#[serde(rename_all = "...")]`.
//!
//! Every mistake is a compile error at the offending tokens, all reported at
//! once; a rule on a field of the wrong type (a `range` on a `String`) is
//! reported at the field's type.

mod case;
mod check;
mod expand;
mod parse;

use proc_macro::TokenStream;
use syn::{DeriveInput, parse_macro_input};

/// Implements `stream_core::Payload` and `stream_core::Record` for a struct
/// with named fields; see the [crate documentation](crate) for the attributes.
#[proc_macro_derive(Record, attributes(record))]
pub fn derive_record(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    derive(&input).unwrap_or_else(syn::Error::into_compile_error).into()
}

/// Parses, checks and expands, or returns every error found.
fn derive(input: &DeriveInput) -> syn::Result<proc_macro2::TokenStream> {
    let mut errors = parse::Errors::default();
    let model = parse::parse(input, &mut errors);
    if let Some(model) = &model {
        check::check(model, &mut errors);
    }
    errors.finish()?;
    match model {
        Some(model) => Ok(expand::expand(&model)),
        // `parse` returns `None` only after reporting an error.
        None => Err(syn::Error::new_spanned(&input.ident, "`#[derive(Record)]` needs a struct with named fields")),
    }
}
