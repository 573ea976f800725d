//! # fedai-worker
//!
//! A stateless worker: it advertises what its runner serves, takes job requests from every
//! configured relay, runs them on the runner, and publishes feedback, results and signed
//! metering records. See [`worker::Worker`].

pub mod admit;
pub mod config;
pub mod hardware;
pub mod inputs;
pub mod metrics;
pub mod worker;

pub use config::{Cli, WorkerConfig};
pub use worker::Worker;
