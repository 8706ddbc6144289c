//! # capture-proxy
//!
//! A thread-per-core, io_uring HTTP/1.1 capture proxy for the OpenSearch Migration Assistant.
//! It forwards every client request to one source cluster unchanged and records every
//! connection's bytes as protobuf `TrafficStream` records (Kafka, or base64 lines in trace
//! files) that the Traffic Replayer reads.
//!
//! Layout (see README "Design"): `cli` → `config` (validated once) → `runtime` (threads) →
//! `worker` (per core) → `conn` (hot path) using the sans-IO `http1` framers and the
//! `capture` record builder; records cross threads only through `handoff` to the single
//! `sink` thread. `inspect` reads captures back and verifies them. The Kafka producer and
//! `inspect`'s consumer share one Kafka client module, `kafka` (settings, auth, logging).
//!
//! Start the whole proxy in-process with [`runtime::start`] (tests and benches do, on port 0).

pub mod admin;
pub mod capture;
pub mod cli;
pub mod config;
pub mod conn;
pub mod handoff;
pub mod http1;
pub mod inspect;
pub mod kafka;
pub mod notify;
pub mod runtime;
pub mod sink;
pub mod stats;
pub mod tls;
pub mod upstream;
pub mod worker;

pub use runtime::{start, Handle, StartError};
