//! The README's storage example: write a chunk to an in-memory store and read it back.
//!
//! Run: `cargo run --example storage`.

#![allow(clippy::print_stdout)] // An example program prints its result.

use benchfs::storage::{ChunkStore, InMemoryChunkStore};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut store = InMemoryChunkStore::new(1024 * 1024 * 100); // 100 MB
    let data = vec![42u8; 4096];
    store.write_chunk(1, 0, 0, &data).await?;
    let read_data = store.read_chunk(1, 0, 0, 4096).await?;
    assert_eq!(data, read_data);

    println!("read back {} bytes", read_data.len());
    Ok(())
}
