//! The README's example: create a file, write it, close it, open it again and read it back,
//! with the async API on a current-thread runtime.
//!
//! Run it in a directory holding the cluster's `benchfs.toml`: `benchfs cluster up
//! --servers 4 --dir /tmp/bfs`, then `cd /tmp/bfs && cargo run --manifest-path
//! <repo>/Cargo.toml --example quickstart`.

#![allow(clippy::print_stdout)] // An example program prints its result.

use benchfs::api::{ApiError, BenchFS, OpenFlags};
use benchfs::config::ServerConfig;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), ApiError> {
    let config = ServerConfig::from_file("benchfs.toml")?;
    let fs = BenchFS::new(config).await?;
    let fd = fs
        .create("/test.txt", OpenFlags::CREATE | OpenFlags::WRITE)
        .await?;
    let written = fs.write(fd, b"Hello, BenchFS!").await?;
    fs.close(fd).await?;
    let fd = fs.open("/test.txt", OpenFlags::READ).await?;
    let mut buffer = vec![0u8; 1024];
    let read = fs.read(fd, &mut buffer).await?;
    fs.close(fd).await?;

    assert_eq!(written, read);
    println!("{}", String::from_utf8_lossy(&buffer[..read]));
    Ok(())
}
