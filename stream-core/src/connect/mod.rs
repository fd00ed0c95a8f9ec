//! Connectors to systems outside the broker: sources that feed topics from
//! them and sinks that write what agents produce into them, each behind a
//! cargo feature of its own. They follow the runtime's rules: a source
//! acknowledges a message to its origin only once its write to the broker is
//! acknowledged; a sink call resolves only once the data is safely outside (so
//! the event that produced it is committed after that), waits and retries
//! while the other system is away (so the stream backs up through Strom's
//! backpressure), and fails with an error the agent's error policy handles
//! when retrying cannot help.

#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "websocket")]
pub mod websocket;
