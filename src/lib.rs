//! BenchFS: an ad hoc distributed file system for the compute nodes of an HPC job, and a
//! benchmark framework for file-system designs.
//!
//! This crate is the facade: it re-exports the public paths of the crates underneath
//! (`benchfs-client`, `benchfs-config`, `benchfs-proto`, `benchfs-server`,
//! `benchfs-store`) and holds the `benchfsd` and `benchfs` binaries. Nothing underneath
//! imports it. See ARCHITECTURE.md for the map.
#![forbid(unsafe_code)]

/// The async client API: [`api::BenchFS`] (on a tokio current-thread runtime), its open
/// flags and its error type.
pub mod api {
    pub use benchfs_client::api::*;
}

/// The blocking client API: [`blocking::BenchFS`], one per thread, for programs with no
/// async runtime; the C API and the FUSE mount build on it.
pub mod blocking {
    pub use benchfs_client::blocking::*;
}

/// Configuration: `benchfs.toml`, `BENCHFS_*` overrides, validation.
pub mod config {
    pub use benchfs_config::*;
}

/// A client's view of the metadata: [`metadata::MetadataManager`] stores and fetches a
/// path's record on the node that owns it, on a cluster or in a local simulation. (One
/// server's share of the namespace is `benchfs::server::metadata::MetadataTable`; the
/// wire record is `benchfs::proto::meta::FileMetadata`.)
pub mod metadata {
    pub use benchfs_client::metadata::*;
    pub use benchfs_proto::meta::{EntryKind, SizeUpdate};
}

/// Chunk stores (re-exported from `benchfs-store`).
pub mod storage {
    pub use benchfs_store::*;
}

pub use benchfs_client as client;
pub use benchfs_config::registry;
pub use benchfs_proto as proto;
pub use benchfs_proto::{layout, limits, path, placement};
pub use benchfs_server as server;
