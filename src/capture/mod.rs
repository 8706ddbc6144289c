//! Sans-IO capture: the hand-written `TrafficStream` encoder (`encode`), the per-connection
//! record builder (`builder`), prost decoding structs (`proto`) and the "did we capture it
//! all?" verifier (`verify`).
//!
//! May depend on: nothing but prost (decoding). Knows nothing of sockets, threads, Kafka or
//! flags. Invariant: what `builder` emits decodes with `proto` and passes `verify`.

pub mod builder;
pub mod encode;
pub mod proto;
pub mod verify;
