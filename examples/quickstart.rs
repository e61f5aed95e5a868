//! The README's example: create a file, write it, close it, open it again and read it back.
//!
//! Run against a cluster: `benchfs cluster up --servers 4 --dir /tmp/bfs`, then
//! `cargo run --example quickstart -- /tmp/bfs/registry`.

#![allow(clippy::print_stdout)] // An example program prints its result.

use benchfs::api::{BenchFS, OpenFlags};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let registry = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/tmp/benchfs-registry".into());
    let fs = BenchFS::connect_registry(&registry)?;

    let fd = fs.create("/hello.txt", 0o644)?;
    fs.write(fd, b"Hello, BenchFS!")?;
    fs.close(fd)?;

    let fd = fs.open("/hello.txt", OpenFlags::READ, 0)?;
    let mut buf = vec![0u8; 64];
    let n = fs.read(fd, &mut buf)?;
    fs.close(fd)?;

    assert_eq!(&buf[..n], b"Hello, BenchFS!");
    println!("{}", String::from_utf8_lossy(&buf[..n]));
    Ok(())
}
