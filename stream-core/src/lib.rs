//! # Strom
//!
//! Faust-style stream processing for Rust: small async **agents** consume typed
//! **topics**, in order per partition, and their offsets are committed only once
//! everything they produced is safely on the broker.
//!
//! ```
//! use std::time::Duration;
//! use serde::{Deserialize, Serialize};
//! use stream_core::prelude::*;
//!
//! #[derive(Record, Serialize, Deserialize, Clone, Debug)]
//! struct Order {
//!     #[record(key)]
//!     id: u64,
//!     #[record(range(min = 0.0))]
//!     amount: f64,
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let app = App::builder("shop").broker("memory://").build()?;
//! let orders = app.topic::<u64, Order>("orders").partitions(4);
//! let large = app.topic::<u64, Order>("large-orders");
//!
//! let out = large.clone();
//! app.agent("find-large", &orders, move |orders| {
//!     let out = out.clone();
//!     async move {
//!         let mut large = orders.filter(|o| o.value().amount > 1000.0);
//!         while let Some(order) = large.next().await {
//!             out.send_record(order.value()).await?;
//!         }
//!         Ok(())
//!     }
//! })
//! .concurrency(2);
//!
//! let worker = app.start().await?;
//! orders.send_record(&Order { id: 1, amount: 5000.0 }).await?;
//! # tokio::time::sleep(Duration::from_millis(50)).await;
//! worker.stop().await?;
//! # Ok(()) }
//! ```
//!
//! The [`guide`] shows every part with examples; `docs/ARCHITECTURE.md` explains
//! how it works.
#[allow(unused_extern_crates)]
extern crate self as stream_core;

mod agent;
mod app;
mod cli;
pub mod codec;
pub mod connect;
pub mod dlq;
mod error;
mod event;
pub mod metrics;
pub mod record;
mod stream;
pub mod table;
pub mod testing;
mod timer;
mod topic;
pub mod tracking;
pub mod transport;
#[cfg(feature = "web")]
mod web;
mod worker;

pub use agent::{Agent, AgentStats, ErrorPolicy, OnExhausted};
pub use app::{App, AppBuilder, AppConfig, CoPartitioned, TableStore};
pub use cli::{init_logging, run_command};
pub use error::{BoxError, Error, Origin, Rejected, Result};
pub use event::Event;
pub use metrics::Metrics;
pub use record::{Payload, Record, Schema, ValidationError};
pub use stream::{Batches, EventStream};
#[cfg(feature = "derive")]
pub use stream_macros::Record;
pub use table::{Change, Changes, GlobalTable, Table, TablePartition, TableStats};
pub use timer::Shutdown;
pub use topic::{MessageBuilder, Topic};
pub use tracking::DeliveryReceipt;
pub use worker::{Worker, shutdown_signal};

#[doc = include_str!("../../docs/GUIDE.md")]
pub mod guide {}

#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

/// The usual imports: `use stream_core::prelude::*;`.
pub mod prelude {
    pub use crate::{App, BoxError, ErrorPolicy, Event, EventStream, Payload, Record, Rejected, Table, Topic};
    pub use futures::StreamExt;
}
