//! Codecs: how keys and values become bytes on a topic and back.
//!
//! Every [`Payload`] type names its default codec; a [`Topic`](crate::Topic) can
//! be given another one with [`Topic::with_value_codec`](crate::Topic::with_value_codec).
//! Strom ships [`Json`] (the default for records), [`Raw`] (bytes as they are),
//! [`Utf8`] (text) and [`Unit`] (the empty key); implement [`Codec`] for anything else.
//!
//! ```
//! use stream_core::codec::{Codec, CodecError};
//!
//! /// Comma-separated pairs of integers, for a legacy producer.
//! #[derive(Default)]
//! struct Csv;
//!
//! impl Codec<(i64, i64)> for Csv {
//!     fn name(&self) -> &'static str {
//!         "csv"
//!     }
//!     fn encode(&self, value: &(i64, i64)) -> Result<Vec<u8>, CodecError> {
//!         Ok(format!("{},{}", value.0, value.1).into_bytes())
//!     }
//!     fn decode(&self, bytes: &[u8]) -> Result<(i64, i64), CodecError> {
//!         let text = std::str::from_utf8(bytes).map_err(CodecError::custom)?;
//!         let (a, b) = text.split_once(',').ok_or_else(|| CodecError::custom("expected `a,b`"))?;
//!         Ok((a.trim().parse().map_err(CodecError::custom)?, b.trim().parse().map_err(CodecError::custom)?))
//!     }
//! }
//!
//! assert_eq!(Csv.decode(b"1, 2").unwrap(), (1, 2));
//! assert!(Csv.decode(b"12").is_err());
//! ```

use std::cell::RefCell;
use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Serialize, de::DeserializeOwned};

use crate::record::Payload;

/// Why bytes could not be turned into a value, or a value into bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{codec} codec: {message}")]
pub struct CodecError {
    /// The codec that failed (`json`, `utf8`, ...).
    pub codec: &'static str,
    /// What went wrong, in words.
    pub message: String,
}

impl CodecError {
    /// An error of a custom codec, from anything printable.
    pub fn custom(message: impl fmt::Display) -> Self {
        CodecError { codec: "custom", message: message.to_string() }
    }
}

/// Turns values of type `T` into bytes and back.
///
/// Codecs are shared between tasks, so they must be `Send + Sync`. Decoding gets
/// bytes from outside the process: it must return an error, never panic.
pub trait Codec<T>: Send + Sync + 'static {
    /// A short name used in errors and dead-letter headers.
    fn name(&self) -> &'static str;
    /// Encodes a value.
    fn encode(&self, value: &T) -> Result<Vec<u8>, CodecError>;
    /// Decodes a value.
    fn decode(&self, bytes: &[u8]) -> Result<T, CodecError>;

    /// Encodes into shared bytes. Codecs that can avoid a copy override it.
    fn encode_bytes(&self, value: &T) -> Result<Bytes, CodecError> {
        self.encode(value).map(Bytes::from)
    }

    /// Decodes from shared bytes. Codecs that can avoid a copy override it.
    fn decode_bytes(&self, bytes: &Bytes) -> Result<T, CodecError> {
        self.decode(bytes)
    }
}

/// JSON through serde: the default codec of records and plain data.
#[derive(Debug, Default, Clone, Copy)]
pub struct Json;

impl<T: Serialize + DeserializeOwned> Codec<T> for Json {
    fn name(&self) -> &'static str {
        "json"
    }
    fn encode(&self, value: &T) -> Result<Vec<u8>, CodecError> {
        serde_json::to_vec(value).map_err(|e| json_error(&e))
    }
    fn decode(&self, bytes: &[u8]) -> Result<T, CodecError> {
        // Checking UTF-8 once up front is cheaper than serde_json checking every
        // string it meets; invalid input takes the slice path for serde_json's
        // own error message.
        match std::str::from_utf8(bytes) {
            Ok(text) => serde_json::from_str(text),
            Err(_) => serde_json::from_slice(bytes),
        }
        .map_err(|e| json_error(&e))
    }
    /// Encodes into a per-thread buffer shared by consecutive messages, so a
    /// message costs no allocation of its own (see [`encode_shared`]).
    fn encode_bytes(&self, value: &T) -> Result<Bytes, CodecError> {
        encode_shared(|out| serde_json::to_writer(out, value).map_err(|e| json_error(&e)))
            .unwrap_or_else(|| self.encode(value).map(Bytes::from))
    }
}

fn json_error(e: &serde_json::Error) -> CodecError {
    CodecError { codec: "json", message: e.to_string() }
}

/// How much room the per-thread encoding buffer takes at a time.
const ENCODE_CHUNK: usize = 4096;

thread_local! {
    static ENCODE_BUFFER: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// Runs `write` into this thread's encoding buffer and splits off what it
/// wrote: consecutive messages share one allocation of [`ENCODE_CHUNK`] bytes,
/// freed when the last of them is dropped. `None` if the buffer is in use (a
/// codec encoding from inside another's `Serialize`): encode some other way.
fn encode_shared(
    write: impl FnOnce(&mut bytes::buf::Writer<&mut BytesMut>) -> Result<(), CodecError>,
) -> Option<Result<Bytes, CodecError>> {
    ENCODE_BUFFER.with(|buffer| {
        let mut buffer = buffer.try_borrow_mut().ok()?;
        if buffer.capacity() - buffer.len() < ENCODE_CHUNK / 8 {
            buffer.reserve(ENCODE_CHUNK);
        }
        let outcome = write(&mut (&mut *buffer).writer());
        Some(match outcome {
            Ok(()) => Ok(buffer.split().freeze()),
            Err(e) => {
                buffer.clear();
                Err(e)
            }
        })
    })
}

/// Bytes as they are, for `Vec<u8>` and [`Bytes`].
#[derive(Debug, Default, Clone, Copy)]
pub struct Raw;

impl Codec<Vec<u8>> for Raw {
    fn name(&self) -> &'static str {
        "raw"
    }
    fn encode(&self, value: &Vec<u8>) -> Result<Vec<u8>, CodecError> {
        Ok(value.clone())
    }
    fn decode(&self, bytes: &[u8]) -> Result<Vec<u8>, CodecError> {
        Ok(bytes.to_vec())
    }
}

impl Codec<Bytes> for Raw {
    fn name(&self) -> &'static str {
        "raw"
    }
    fn encode(&self, value: &Bytes) -> Result<Vec<u8>, CodecError> {
        Ok(value.to_vec())
    }
    fn decode(&self, bytes: &[u8]) -> Result<Bytes, CodecError> {
        Ok(Bytes::copy_from_slice(bytes))
    }
    fn encode_bytes(&self, value: &Bytes) -> Result<Bytes, CodecError> {
        Ok(value.clone())
    }
    fn decode_bytes(&self, bytes: &Bytes) -> Result<Bytes, CodecError> {
        Ok(bytes.clone())
    }
}

/// UTF-8 text, for `String`. Invalid UTF-8 is a decode error.
#[derive(Debug, Default, Clone, Copy)]
pub struct Utf8;

impl Codec<String> for Utf8 {
    fn name(&self) -> &'static str {
        "utf8"
    }
    fn encode(&self, value: &String) -> Result<Vec<u8>, CodecError> {
        Ok(value.as_bytes().to_vec())
    }
    fn decode(&self, bytes: &[u8]) -> Result<String, CodecError> {
        String::from_utf8(bytes.to_vec()).map_err(|e| CodecError { codec: "utf8", message: e.to_string() })
    }
}

/// The unit key `()`: topics whose messages carry no key. Encodes to nothing and
/// accepts any key bytes on decode.
#[derive(Debug, Default, Clone, Copy)]
pub struct Unit;

impl Codec<()> for Unit {
    fn name(&self) -> &'static str {
        "unit"
    }
    fn encode(&self, _value: &()) -> Result<Vec<u8>, CodecError> {
        Ok(Vec::new())
    }
    fn decode(&self, _bytes: &[u8]) -> Result<(), CodecError> {
        Ok(())
    }
}

/// Implements [`Payload`] with the [`Json`] codec for types that have no
/// validation and no event time.
macro_rules! json_payload {
    ($($t:ty),* $(,)?) => {$(
        impl Payload for $t {
            type Codec = Json;
        }
    )*};
}

json_payload!(serde_json::Value, bool, i8, i16, i32, i64, u8, u16, u32, u64, f32, f64);

impl Payload for String {
    type Codec = Utf8;
}

impl Payload for Vec<u8> {
    type Codec = Raw;
}

impl Payload for Bytes {
    type Codec = Raw;
}

impl Payload for () {
    type Codec = Unit;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_and_error() {
        let bytes = Json.encode(&serde_json::json!({"id": 1})).unwrap();
        let back: serde_json::Value = Json.decode(&bytes).unwrap();
        assert_eq!(back["id"], 1);
        let err = <Json as Codec<serde_json::Value>>::decode(&Json, b"{nope").unwrap_err();
        assert_eq!(err.codec, "json");
        assert!(err.message.contains("key must be a string"), "{err}");
    }

    #[test]
    fn json_shared_encoding_keeps_messages_apart() {
        let values: Vec<serde_json::Value> = (0..2000).map(|i| serde_json::json!({"id": i, "name": "x"})).collect();
        let encoded: Vec<Bytes> = values.iter().map(|v| Json.encode_bytes(v).unwrap()).collect();
        for (v, bytes) in values.iter().zip(&encoded) {
            assert_eq!(bytes.as_ref(), Json.encode(v).unwrap().as_slice());
            assert_eq!(&<Json as Codec<serde_json::Value>>::decode_bytes(&Json, bytes).unwrap(), v);
        }
        // A value that fails half-way leaves nothing behind for the next one.
        let bad = std::collections::BTreeMap::from([(vec![1u8], 1)]);
        assert!(Json.encode_bytes(&bad).is_err());
        assert_eq!(Json.encode_bytes(&7u32).unwrap().as_ref(), b"7");
    }

    #[test]
    fn json_decode_errors_are_the_same_on_invalid_utf8() {
        let err = <Json as Codec<String>>::decode(&Json, b"\"\xff\"").unwrap_err();
        assert_eq!(err.codec, "json");
        assert!(err.message.contains("invalid unicode"), "{err}");
    }

    #[test]
    fn utf8_rejects_invalid_text() {
        assert_eq!(Utf8.decode("héllo".as_bytes()).unwrap(), "héllo");
        let err = Utf8.decode(&[0xff, 0xfe]).unwrap_err();
        assert_eq!(err.codec, "utf8");
    }

    #[test]
    fn raw_and_unit() {
        assert_eq!(<Raw as Codec<Vec<u8>>>::decode(&Raw, b"\x00\x01").unwrap(), vec![0, 1]);
        assert!(Unit.encode(&()).unwrap().is_empty());
        assert!(Unit.decode(b"anything").is_ok());
    }
}
