//! The BenchFS client: everything a program needs to use a cluster, and nothing of the
//! server. [`FsClient`] is the file-system client (one per thread); [`api::BenchFS`] its
//! async face and [`blocking::BenchFS`] its blocking one, both over one `FsClient`; [`rpc`]
//! the typed RPC over UCX Active Messages underneath.
//!
//! Dependencies run one way: the `benchfs` facade, the C API and the FUSE mount use this
//! crate; it uses `benchfs-proto` (wire types and the pure placement, layout and path
//! rules), `benchfs-config` and `benchfs-ucx`, and never the server.
#![forbid(unsafe_code)]

pub mod api;
pub mod blocking;
mod error;
mod flags;
pub mod fs;
pub mod metadata;

pub use error::ApiError;
pub use flags::OpenFlags;
pub use fs::{process_owner, DirEntry, Fd, FsClient, FsSpace, Whence};

/// The typed RPC underneath (re-exported from `benchfs-rpc`).
pub use benchfs_rpc as rpc;
