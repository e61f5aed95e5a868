//! BenchFS: an ad hoc distributed file system for the compute nodes of an HPC job, and a
//! benchmark framework for file-system designs.
//!
//! The crate holds everything above the transport and the chunk stores: configuration,
//! placement, chunk layout, path rules, the per-server metadata table and the client API.
//! See ARCHITECTURE.md for the map.
#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod layout;
pub mod limits;
pub mod metadata;
pub mod path;
pub mod placement;
pub mod registry;
pub mod rpc;
pub mod server;

/// Chunk stores (re-exported from `benchfs-store`).
pub mod storage {
    pub use benchfs_store::*;
}

pub use benchfs_proto as proto;
