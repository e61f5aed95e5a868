//! BenchFS wire types: operation ids, frame headers, operation bodies and status codes,
//! with no I/O.
//!
//! Everything here is plain data with explicit little-endian layouts, so it can be tested
//! and fuzzed without a network. Byte layouts are in docs/design.md.
#![forbid(unsafe_code)]

pub mod frame;
pub mod meta;
pub mod ops;
pub mod status;
pub mod wire;

pub use frame::{Frame, FrameHeader, OpCode};
pub use ops::{Message, Rpc};
pub use status::Status;
pub use wire::DecodeError;
