//! The README's metadata example: a manager with one node and no cluster (a local
//! simulation of placement), a record stored and fetched by path.
//!
//! `cargo run --example metadata`

#![allow(clippy::print_stdout)] // An example program prints its result.

use benchfs::metadata::{CachePolicy, FileMetadata, MetadataManager};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cache_policy = CachePolicy::default();
    let manager = MetadataManager::new(cache_policy);
    manager.add_node("node1".to_string());
    let metadata = FileMetadata::new(1, "/data/file.txt".to_string(), 1024);
    manager.store_file_metadata(metadata).await?;
    let retrieved = manager.get_file_metadata("/data/file.txt").await?;
    assert_eq!(retrieved.size, 1024);

    println!(
        "{} is {} bytes, on {}",
        retrieved.path,
        retrieved.size,
        manager.owner(&retrieved.path)?.unwrap_or_default()
    );
    Ok(())
}
