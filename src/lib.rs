//! BenchFS: an ad hoc distributed file system for the compute nodes of an HPC job, and a
//! benchmark framework for file-system designs.
//!
//! This crate is the facade: it re-exports the public paths of the crates underneath
//! (`benchfs-client`, `benchfs-config`, `benchfs-proto`, `benchfs-server`,
//! `benchfs-store`) and holds the `benchfsd` and `benchfs` binaries. Nothing underneath
//! imports it. See ARCHITECTURE.md for the map.
//!
//! The async client, on a current-thread runtime (`examples/quickstart.rs`, which the
//! tests run against a live cluster):
//!
//! ```no_run
//! use benchfs::api::{ApiError, BenchFS, OpenFlags};
//! use benchfs::config::ServerConfig;
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), ApiError> {
//!     let config = ServerConfig::from_file("benchfs.toml")?;
//!     let fs = BenchFS::new(config).await?;
//!     let fd = fs.create("/test.txt", OpenFlags::CREATE | OpenFlags::WRITE).await?;
//!     let written = fs.write(fd, b"Hello, BenchFS!").await?;
//!     fs.close(fd).await?;
//!     let fd = fs.open("/test.txt", OpenFlags::READ).await?;
//!     let mut buffer = vec![0u8; 1024];
//!     let read = fs.read(fd, &mut buffer).await?;
//!     fs.close(fd).await?;
//!     assert_eq!(read, written);
//!     Ok(())
//! }
//! ```
//!
//! Metadata by path on the node that owns it, here with no cluster (a simulation over the
//! servers' ring):
//!
//! ```
//! use benchfs::metadata::{CachePolicy, FileMetadata, MetadataManager};
//! # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
//! let cache_policy = CachePolicy::default();
//! let manager = MetadataManager::new(cache_policy);
//! manager.add_node("node1".to_string());
//! let metadata = FileMetadata::new(1, "/data/file.txt".to_string(), 1024);
//! manager.store_file_metadata(metadata).await?;
//! let retrieved = manager.get_file_metadata("/data/file.txt").await?;
//! assert_eq!(retrieved.size, 1024);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A chunk store on its own:
//!
//! ```
//! use benchfs::storage::{InMemoryChunkStore, ChunkStore};
//! # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
//! let mut store = InMemoryChunkStore::new(1024 * 1024 * 100); // 100 MB
//! let data = vec![42u8; 4096];
//! store.write_chunk(1, 0, 0, &data).await?;
//! let read_data = store.read_chunk(1, 0, 0, 4096).await?;
//! assert_eq!(data, read_data);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
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
