//! Connectors to systems outside the broker: sources that bring their
//! messages into topics, sinks that take topics' messages out.

#[cfg(feature = "mqtt")]
pub mod mqtt;
