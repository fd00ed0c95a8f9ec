//! `relay`: the contract other tools use to drive Strom from outside.
//!
//! Consumes `relay.in` (4 partitions), whose values are JSON objects with an
//! integer field `id`, and produces to `relay.out` the same object with
//! `"relayed": true` added, keeping the key. Anything else goes to
//! `relay.in.dlq` with the reason.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use stream_core::prelude::*;
use stream_core::{ValidationError, codec::Json};

/// A JSON object with an integer `id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Message(pub Map<String, Value>);

impl Payload for Message {
    type Codec = Json;

    fn validate(&self) -> Result<(), ValidationError> {
        match self.0.get("id") {
            Some(id) if id.is_i64() || id.is_u64() => Ok(()),
            Some(other) => Err(ValidationError::new("relay message", "id", format!("must be an integer, not {other}"))),
            None => Err(ValidationError::new("relay message", "id", "is missing")),
        }
    }
}

impl Message {
    fn relayed(mut self) -> Message {
        self.0.insert("relayed".into(), Value::Bool(true));
        self
    }
}

/// The topics of the relay.
#[derive(Debug, Clone)]
pub struct Relay {
    /// `relay.in`.
    pub input: Topic<Bytes, Message>,
    /// `relay.out`.
    pub output: Topic<Bytes, Message>,
}

/// Declares the relay's topics and its agent.
pub fn build(app: &App) -> Relay {
    let input = app.topic::<Bytes, Message>("relay.in").partitions(4);
    let output = app.topic::<Bytes, Message>("relay.out").partitions(4);
    let out = output.clone();
    app.agent("relay", &input, move |messages| {
        let out = out.clone();
        async move { messages.map(Message::relayed).sink(&out).await }
    });
    Relay { input, output }
}
