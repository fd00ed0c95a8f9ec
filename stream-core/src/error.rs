//! Errors of the library.

use crate::codec::CodecError;
use crate::record::ValidationError;

/// The error type of agents' handlers, timers and crontabs: any error converts
/// into it with `?`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Where a message was read from: topic, partition and offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The offset within the partition.
    pub offset: i64,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]@{}", self.topic, self.partition, self.offset)
    }
}

/// An event a handler refuses: input that no retry would make acceptable
/// (an unknown unit, a sensor nobody registered, an absurd timestamp).
///
/// Returned from a handler (`Err(Rejected::new("...").into())`, or `?` on a
/// `Result<_, Rejected>`), it skips the agent's retries: the event goes to
/// its dead-letter topic at once, with `strom.error.kind` `rejected` and the
/// reason, or the agent stops if its policy is
/// [`then_stop`](crate::ErrorPolicy::then_stop). Any other error is retried
/// first (a broker or database that is away may come back).
///
/// ```
/// use stream_core::Rejected;
/// fn celsius(unit: &str, value: f64) -> Result<f64, Rejected> {
///     match unit {
///         "C" => Ok(value),
///         "F" => Ok((value - 32.0) / 1.8),
///         other => Err(Rejected::new(format!("unknown unit {other:?}"))),
///     }
/// }
/// assert_eq!(celsius("X", 1.0).unwrap_err().to_string(), "unknown unit \"X\"");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Rejected {
    reason: String,
}

impl Rejected {
    /// A rejection with its reason.
    pub fn new(reason: impl Into<String>) -> Self {
        Rejected { reason: reason.into() }
    }

    /// The reason.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Whether `error` is a rejection.
    pub fn is(error: &(dyn std::error::Error + 'static)) -> bool {
        error.downcast_ref::<Rejected>().is_some()
    }
}

/// What can go wrong in Strom.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A message's key or value could not be decoded.
    #[error("cannot decode the {part} of {origin}: {source}")]
    Decode {
        /// Where the message came from.
        origin: Origin,
        /// `"key"` or `"value"`.
        part: &'static str,
        /// The codec's error.
        #[source]
        source: CodecError,
    },
    /// A message decoded but broke its record's validation rules.
    #[error("invalid message at {origin}: {source}")]
    Invalid {
        /// Where the message came from.
        origin: Origin,
        /// Every broken rule.
        #[source]
        source: ValidationError,
    },
    /// A value could not be encoded for sending.
    #[error("cannot encode the {part} for topic {topic}: {source}")]
    Encode {
        /// The destination topic.
        topic: String,
        /// `"key"` or `"value"`.
        part: &'static str,
        /// The codec's error.
        #[source]
        source: CodecError,
    },
    /// The broker did not accept a message.
    #[error("cannot send to topic {topic}: {reason}")]
    Send {
        /// The destination topic.
        topic: String,
        /// Why.
        reason: String,
    },
    /// A topic is missing, or exists with another partition count than declared.
    #[error("topic {topic}: {reason}")]
    Topic {
        /// The topic.
        topic: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The configuration (environment, broker URL, ...) is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// The transport (broker connection) failed.
    #[error("{transport} transport: {reason}")]
    Transport {
        /// `memory` or `kafka`.
        transport: &'static str,
        /// What happened.
        reason: String,
    },
    /// An agent stopped because of an error its policy does not absorb.
    #[error("agent {agent} stopped: {source}")]
    AgentStopped {
        /// The agent's name.
        agent: String,
        /// The handler's error.
        #[source]
        source: BoxError,
    },
    /// A table cannot do what was asked (a partition this worker does not
    /// serve, a partition count that does not match its topic, a stored
    /// value that no longer decodes).
    #[error("table {table}: {reason}")]
    Table {
        /// The table's name.
        table: String,
        /// What is wrong.
        reason: String,
    },
    /// The application was used in a way that cannot work (e.g. a topic
    /// declared twice with different settings).
    #[error("{0}")]
    Usage(String),
    /// The worker is shutting down and no longer accepts the request.
    #[error("the worker is shutting down")]
    ShuttingDown,
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// A shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
