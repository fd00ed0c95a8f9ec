//! Small Strom programs, one idea each. Every example is a function that
//! declares its topics and agents on an [`App`](stream_core::App), so the
//! tests can run it in-process on the memory transport, and a binary in
//! `src/bin/` that runs it as a worker with the CLI.

pub mod dlq;
pub mod hello;
pub mod relay;
pub mod windowed_average;
pub mod wordcount;
