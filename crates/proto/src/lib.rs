//! What BenchFS clients and servers agree on, with no I/O: the wire types (operation ids,
//! frame headers, operation bodies, status codes), every limit and default, and the pure
//! rules both sides apply: the placement ring, the chunk layout and path normalisation.
//!
//! Everything here is plain data and pure functions, so it can be tested and fuzzed
//! without a network. Byte layouts are in docs/design.md.
#![forbid(unsafe_code)]

pub mod auth;
pub mod clock;
pub mod frame;
pub mod layout;
pub mod limits;
pub mod meta;
pub mod ops;
pub mod path;
pub mod placement;
pub mod status;
pub mod wire;

pub use frame::{Frame, FrameHeader, OpCode};
pub use ops::{Message, Rpc};
pub use status::Status;
pub use wire::DecodeError;
