//! Records: the typed values that flow through topics.
//!
//! Any type on a topic is a [`Payload`]: it names its codec and may validate
//! itself and carry an event time. `#[derive(Record)]` makes a struct a
//! [`Payload`] (JSON) and a [`Record`] (key field, schema, namespace and version):
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use stream_core::{Payload, Record};
//!
//! #[derive(Record, Serialize, Deserialize, Clone, Debug)]
//! #[record(namespace = "sensors.reading", version = 2)]
//! struct Reading {
//!     #[record(key)]
//!     sensor_id: u32,
//!     #[record(timestamp)]
//!     ts_ms: i64,
//!     #[record(range(min = -90.0, max = 60.0))]
//!     celsius: f64,
//! }
//!
//! let ok = Reading { sensor_id: 7, ts_ms: 1_700_000_000_000, celsius: 21.5 };
//! assert!(ok.validate().is_ok());
//! assert_eq!(ok.key(), Some(7));
//! assert_eq!(ok.event_time_ms(), Some(1_700_000_000_000));
//! assert_eq!(Reading::schema().version, 2);
//!
//! let hot = Reading { celsius: 900.0, ..ok };
//! let err = hot.validate().unwrap_err();
//! assert_eq!(err.violations[0].field, "celsius");
//! ```
//!
//! Validation runs when a record is decoded from a topic: an invalid record never
//! reaches an agent, it goes to the topic's dead-letter queue with the reason.

use std::fmt;
use std::time::SystemTime;

use serde::{Serialize, de::DeserializeOwned};

use crate::codec::Codec;

/// A type that can travel on a topic: it names its default codec, and may
/// validate itself and report an event time.
///
/// `#[derive(Record)]` implements it; for plain serde types one line is enough:
///
/// ```
/// # use serde::{Deserialize, Serialize};
/// #[derive(Serialize, Deserialize)]
/// struct Greeting { name: String }
///
/// impl stream_core::Payload for Greeting {
///     type Codec = stream_core::codec::Json;
/// }
/// ```
pub trait Payload: Sized + Send + Sync + 'static {
    /// The codec used unless a topic is given another one.
    type Codec: Codec<Self> + Default;

    /// Checks the value after decoding. The default accepts everything.
    fn validate(&self) -> Result<(), ValidationError> {
        Ok(())
    }

    /// The event time in epoch milliseconds, when the value carries one.
    fn event_time_ms(&self) -> Option<i64> {
        None
    }
}

/// A structured record: a [`Payload`] with a key field, a schema, a namespace
/// and a version. Implemented by `#[derive(Record)]`.
pub trait Record: Payload + Serialize + DeserializeOwned {
    /// The type of the `#[record(key)]` field, or `()` when there is none.
    type Key: Clone + Send + Sync + 'static;

    /// The namespace (`#[record(namespace = "...")]`), or the type name.
    const NAMESPACE: &'static str;

    /// The schema version (`#[record(version = N)]`), 1 by default.
    const VERSION: u32;

    /// The record's key, `None` when the record has no key field.
    fn key(&self) -> Option<Self::Key>;

    /// The field names, types and rules, for documentation and tooling.
    fn schema() -> &'static Schema;
}

/// The description of a record type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schema {
    /// The Rust type name.
    pub name: &'static str,
    /// The namespace.
    pub namespace: &'static str,
    /// The schema version.
    pub version: u32,
    /// The fields, in declaration order.
    pub fields: &'static [FieldSchema],
}

/// One field of a [`Schema`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldSchema {
    /// The name on the wire (after `#[serde(rename)]`).
    pub name: &'static str,
    /// The Rust type, as written.
    pub ty: &'static str,
    /// Whether this is the key field.
    pub key: bool,
    /// Whether this is the event-time field.
    pub timestamp: bool,
    /// The validation rules, as written (`range(min = 0, max = 10)`, ...).
    pub rules: &'static [&'static str],
    /// The field's doc comment, trimmed.
    pub doc: &'static str,
}

impl Schema {
    /// The field with this wire name.
    pub fn field(&self, name: &str) -> Option<&FieldSchema> {
        self.fields.iter().find(|f| f.name == name)
    }
}

impl fmt::Display for Schema {
    /// A Markdown table of the fields.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} ({} v{})", self.name, self.namespace, self.version)?;
        writeln!(f)?;
        writeln!(f, "| field | type | role | rules | doc |")?;
        writeln!(f, "|---|---|---|---|---|")?;
        for field in self.fields {
            let role = match (field.key, field.timestamp) {
                (true, true) => "key, timestamp",
                (true, false) => "key",
                (false, true) => "timestamp",
                (false, false) => "",
            };
            writeln!(f, "| {} | `{}` | {} | {} | {} |", field.name, field.ty, role, field.rules.join(", "), field.doc)?;
        }
        Ok(())
    }
}

/// One broken rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    /// The field (wire name), or `*` for a record-level rule.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

/// A record that broke one or more validation rules. Lists every violation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid {record}: {}", display_violations(.violations))]
pub struct ValidationError {
    /// The record type.
    pub record: &'static str,
    /// Every broken rule, in field order.
    pub violations: Vec<Violation>,
}

fn display_violations(violations: &[Violation]) -> String {
    violations.iter().map(|v| format!("{}: {}", v.field, v.message)).collect::<Vec<_>>().join("; ")
}

impl ValidationError {
    /// A single violation, for hand-written [`Payload::validate`] impls.
    pub fn new(record: &'static str, field: &'static str, message: impl Into<String>) -> Self {
        ValidationError { record, violations: vec![Violation { field, message: message.into() }] }
    }
}

/// Types that can be a record's event time (`#[record(timestamp)]`).
///
/// Integers are epoch milliseconds, floats are epoch seconds (as many sensors
/// send them), and `SystemTime` and chrono's `DateTime` are what they say.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a time: `#[record(timestamp)]` needs epoch milliseconds (i64, u64), epoch seconds (f64), SystemTime or chrono::DateTime",
    label = "not a time type"
)]
pub trait EventTime {
    /// The time in epoch milliseconds, `None` when unknown or out of range.
    fn epoch_ms(&self) -> Option<i64>;
}

impl EventTime for i64 {
    fn epoch_ms(&self) -> Option<i64> {
        Some(*self)
    }
}

impl EventTime for u64 {
    fn epoch_ms(&self) -> Option<i64> {
        i64::try_from(*self).ok()
    }
}

impl EventTime for f64 {
    fn epoch_ms(&self) -> Option<i64> {
        let ms = (*self * 1000.0).round();
        // `as` saturates; reject what saturation would silently change.
        (ms.is_finite() && ms.abs() < 9.0e15).then_some(ms as i64)
    }
}

impl EventTime for SystemTime {
    fn epoch_ms(&self) -> Option<i64> {
        match self.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).ok(),
            Err(e) => i64::try_from(e.duration().as_millis()).ok().map(|ms| -ms),
        }
    }
}

impl<Tz: chrono::TimeZone> EventTime for chrono::DateTime<Tz> {
    fn epoch_ms(&self) -> Option<i64> {
        Some(self.timestamp_millis())
    }
}

impl<T: EventTime> EventTime for Option<T> {
    fn epoch_ms(&self) -> Option<i64> {
        self.as_ref().and_then(EventTime::epoch_ms)
    }
}

/// Support code for `#[derive(Record)]`. Not a public API: it may change in
/// any release.
#[doc(hidden)]
pub mod __private {
    use std::sync::OnceLock;

    pub use super::{EventTime, FieldSchema, Payload, Record, Schema, ValidationError, Violation};
    pub use crate::codec::Json;
    pub use regex::Regex;
    pub use serde::{Serialize, de::DeserializeOwned};

    /// A literal bound of a `range`/`min`/`max` rule.
    #[derive(Debug, Clone, Copy)]
    pub enum Bound {
        /// An integer literal.
        Int(i128),
        /// A float literal.
        Float(f64),
    }

    /// Field types a `range`, `min` or `max` rule applies to.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` is not a number: `range`, `min` and `max` apply to integers and floats",
        label = "not a number"
    )]
    pub trait RangeCheck {
        /// `Some(true)` when within, `Some(false)` when outside, `None` when
        /// there is nothing to check (an empty `Option`).
        fn within(&self, min: Option<Bound>, max: Option<Bound>) -> Option<bool>;
    }

    fn cmp_f64(v: f64, min: Option<Bound>, max: Option<Bound>) -> bool {
        let as_f = |b: Bound| match b {
            Bound::Int(i) => i as f64,
            Bound::Float(f) => f,
        };
        // NaN is within no range.
        min.is_none_or(|m| v >= as_f(m)) && max.is_none_or(|m| v <= as_f(m)) && !v.is_nan()
    }

    fn cmp_i128(v: i128, min: Option<Bound>, max: Option<Bound>) -> bool {
        let ok = |b: Bound, above: bool| match b {
            Bound::Int(i) => {
                if above {
                    v >= i
                } else {
                    v <= i
                }
            }
            Bound::Float(f) => {
                if above {
                    v as f64 >= f
                } else {
                    v as f64 <= f
                }
            }
        };
        min.is_none_or(|m| ok(m, true)) && max.is_none_or(|m| ok(m, false))
    }

    macro_rules! range_int {
        ($($t:ty),*) => {$(
            impl RangeCheck for $t {
                fn within(&self, min: Option<Bound>, max: Option<Bound>) -> Option<bool> {
                    Some(cmp_i128(i128::from(*self), min, max))
                }
            }
        )*};
    }
    range_int!(i8, i16, i32, i64, u8, u16, u32, u64);

    macro_rules! range_wide {
        ($($t:ty),*) => {$(
            impl RangeCheck for $t {
                fn within(&self, min: Option<Bound>, max: Option<Bound>) -> Option<bool> {
                    // Beyond i128 (only u128 can be) is above every integer bound.
                    Some(match i128::try_from(*self) {
                        Ok(v) => cmp_i128(v, min, max),
                        Err(_) => max.is_none(),
                    })
                }
            }
        )*};
    }
    range_wide!(i128, u128, isize, usize);

    impl RangeCheck for f32 {
        fn within(&self, min: Option<Bound>, max: Option<Bound>) -> Option<bool> {
            Some(cmp_f64(f64::from(*self), min, max))
        }
    }

    impl RangeCheck for f64 {
        fn within(&self, min: Option<Bound>, max: Option<Bound>) -> Option<bool> {
            Some(cmp_f64(*self, min, max))
        }
    }

    impl<T: RangeCheck> RangeCheck for Option<T> {
        fn within(&self, min: Option<Bound>, max: Option<Bound>) -> Option<bool> {
            self.as_ref().and_then(|v| v.within(min, max))
        }
    }

    /// Field types a `len` or `non_empty` rule applies to.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` has no length: `len` and `non_empty` apply to strings and collections",
        label = "has no length"
    )]
    pub trait HasLen {
        /// The length (characters for strings), `None` for an empty `Option`.
        fn field_len(&self) -> Option<usize>;
    }

    impl HasLen for String {
        fn field_len(&self) -> Option<usize> {
            Some(self.chars().count())
        }
    }

    impl<T> HasLen for Vec<T> {
        fn field_len(&self) -> Option<usize> {
            Some(self.len())
        }
    }

    impl<K, V, S> HasLen for std::collections::HashMap<K, V, S> {
        fn field_len(&self) -> Option<usize> {
            Some(self.len())
        }
    }

    impl<K, V> HasLen for std::collections::BTreeMap<K, V> {
        fn field_len(&self) -> Option<usize> {
            Some(self.len())
        }
    }

    impl HasLen for str {
        fn field_len(&self) -> Option<usize> {
            Some(self.chars().count())
        }
    }

    impl<T> HasLen for [T] {
        fn field_len(&self) -> Option<usize> {
            Some(self.len())
        }
    }

    impl<T> HasLen for std::collections::VecDeque<T> {
        fn field_len(&self) -> Option<usize> {
            Some(self.len())
        }
    }

    impl<T, S> HasLen for std::collections::HashSet<T, S> {
        fn field_len(&self) -> Option<usize> {
            Some(self.len())
        }
    }

    impl<T> HasLen for std::collections::BTreeSet<T> {
        fn field_len(&self) -> Option<usize> {
            Some(self.len())
        }
    }

    impl<T: HasLen> HasLen for Option<T> {
        fn field_len(&self) -> Option<usize> {
            self.as_ref().and_then(HasLen::field_len)
        }
    }

    /// Field types a `regex` rule applies to.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` is not text: `regex` applies to `String` and `Option<String>`",
        label = "not text"
    )]
    pub trait AsText {
        /// The text, `None` for an empty `Option`.
        fn as_text(&self) -> Option<&str>;
    }

    impl AsText for String {
        fn as_text(&self) -> Option<&str> {
            Some(self)
        }
    }

    impl AsText for str {
        fn as_text(&self) -> Option<&str> {
            Some(self)
        }
    }

    impl AsText for Box<str> {
        fn as_text(&self) -> Option<&str> {
            Some(self)
        }
    }

    impl AsText for std::sync::Arc<str> {
        fn as_text(&self) -> Option<&str> {
            Some(self)
        }
    }

    impl AsText for std::borrow::Cow<'_, str> {
        fn as_text(&self) -> Option<&str> {
            Some(self)
        }
    }

    impl<T: AsText> AsText for Option<T> {
        fn as_text(&self) -> Option<&str> {
            self.as_ref().and_then(AsText::as_text)
        }
    }

    /// Checks a `range`/`min`/`max` rule.
    pub fn check_range<T: RangeCheck + ?Sized>(
        out: &mut Vec<Violation>,
        field: &'static str,
        value: &T,
        min: Option<Bound>,
        max: Option<Bound>,
        rule: &'static str,
    ) {
        if value.within(min, max) == Some(false) {
            out.push(Violation { field, message: format!("out of range: must satisfy {rule}") });
        }
    }

    /// Checks a `len` rule.
    pub fn check_len<T: HasLen + ?Sized>(
        out: &mut Vec<Violation>,
        field: &'static str,
        value: &T,
        min: Option<usize>,
        max: Option<usize>,
    ) {
        if let Some(len) = value.field_len()
            && (min.is_some_and(|m| len < m) || max.is_some_and(|m| len > m))
        {
            let want = match (min, max) {
                (Some(a), Some(b)) => format!("between {a} and {b}"),
                (Some(a), None) => format!("at least {a}"),
                (None, Some(b)) => format!("at most {b}"),
                (None, None) => String::new(),
            };
            out.push(Violation { field, message: format!("length {len}, must be {want}") });
        }
    }

    /// Checks a `non_empty` rule. An empty `Option` counts as empty.
    pub fn check_non_empty<T: HasLen + ?Sized>(out: &mut Vec<Violation>, field: &'static str, value: &T) {
        if value.field_len().unwrap_or(0) == 0 {
            out.push(Violation { field, message: "must not be empty".to_owned() });
        }
    }

    /// Checks a `regex` rule against a pattern compiled once.
    pub fn check_regex<T: AsText + ?Sized>(
        out: &mut Vec<Violation>,
        field: &'static str,
        value: &T,
        cell: &'static OnceLock<Regex>,
        pattern: &'static str,
    ) {
        if let Some(text) = value.as_text() {
            // The pattern was compiled by the derive macro already, so this cannot fail.
            let re = cell.get_or_init(|| Regex::new(pattern).unwrap_or_else(|_| Regex::new("$^").expect("valid")));
            if !re.is_match(text) {
                out.push(Violation { field, message: format!("does not match /{pattern}/") });
            }
        }
    }

    /// Runs a custom rule: a function returning `Result<(), impl Display>`.
    pub fn check_custom<E: std::fmt::Display>(out: &mut Vec<Violation>, field: &'static str, result: Result<(), E>) {
        if let Err(e) = result {
            out.push(Violation { field, message: e.to_string() });
        }
    }

    /// Turns collected violations into the result of `validate`.
    pub fn finish(record: &'static str, violations: Vec<Violation>) -> Result<(), ValidationError> {
        if violations.is_empty() { Ok(()) } else { Err(ValidationError { record, violations }) }
    }
}

#[cfg(test)]
mod tests {
    use super::__private::*;
    use super::*;

    #[test]
    fn range_checks_ints_floats_and_nan() {
        let mut out = Vec::new();
        check_range(&mut out, "a", &5_i32, Some(Bound::Int(0)), Some(Bound::Int(10)), "range(0..=10)");
        check_range(&mut out, "b", &10.5_f64, None, Some(Bound::Float(10.0)), "max = 10.0");
        check_range(&mut out, "c", &f64::NAN, Some(Bound::Float(0.0)), None, "min = 0.0");
        check_range(&mut out, "d", &None::<u8>, Some(Bound::Int(1)), None, "min = 1");
        check_range(&mut out, "e", &u64::MAX, None, Some(Bound::Int(i128::from(u64::MAX))), "max");
        let fields: Vec<_> = out.iter().map(|v| v.field).collect();
        assert_eq!(fields, ["b", "c"]);
    }

    #[test]
    fn len_non_empty_regex_custom() {
        static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
        let mut out = Vec::new();
        check_len(&mut out, "name", &"héllo".to_string(), Some(1), Some(5));
        check_len(&mut out, "tags", &vec![1, 2, 3], None, Some(2));
        check_non_empty(&mut out, "opt", &None::<String>);
        check_regex(&mut out, "id", &"ab-1".to_string(), &RE, "^[a-z]+$");
        check_custom(&mut out, "x", Err::<(), _>("odd"));
        let fields: Vec<_> = out.iter().map(|v| v.field).collect();
        assert_eq!(fields, ["tags", "opt", "id", "x"]);
        let err = finish("T", out).unwrap_err();
        assert!(err.to_string().starts_with("invalid T: tags: length 3, must be at most 2"), "{err}");
    }

    #[test]
    fn event_times() {
        assert_eq!(1_700_000_000.123_f64.epoch_ms(), Some(1_700_000_000_123));
        assert_eq!(f64::INFINITY.epoch_ms(), None);
        assert_eq!(u64::MAX.epoch_ms(), None);
        assert_eq!(Some(5_i64).epoch_ms(), Some(5));
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(42);
        assert_eq!(t.epoch_ms(), Some(42));
    }
}
