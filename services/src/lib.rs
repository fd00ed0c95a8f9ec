//! The services of Strom's sensor pipeline (the design's "Sensor
//! pipeline"): one binary per service in `src/bin/`, and what they share here.
//!
//! ```text
//! MQTT sensors/+/temperature, /+/temp ─▶ collection ─▶ sensors.raw ─▶ processing ─▶ sensors.processed ─┬▶ aggregation ─▶ sensors.averages ─┐
//!                                                                                                      └──────────────▶ db-loader ◀──────┘
//!                                                                                                                       ▼ Postgres
//!                                                                                                             api-gateway (REST)
//! ```
//!
//! The records on the topics between the services are the contract between
//! them; they live in [`records`], the topics in [`topics`].

pub mod aggregation;
pub mod api;
pub mod collection;
pub mod demo;
pub mod embedded;
pub mod loader;
pub mod processing;
pub mod quake;
pub mod records;
pub mod sensors;
pub mod service;
pub mod simulator;
pub mod topics;
