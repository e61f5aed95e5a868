//! File commands against a running cluster: ls, stat, mkdir, rm, put, get, cat.

use std::io::{Read, Write};
use std::path::PathBuf;

use super::cluster::Target;
use super::CliError;
use benchfs::blocking::{BenchFS, OpenFlags};

/// Bytes moved per call by put, get and cat.
const COPY_BLOCK: usize = 4 << 20;

/// A file command.
#[derive(Debug, clap::Subcommand)]
pub enum FileCommand {
    /// List a directory.
    Ls {
        /// The directory.
        #[arg(default_value = "/")]
        path: String,
        /// Which cluster.
        #[command(flatten)]
        target: Target,
    },
    /// Show a path's metadata.
    Stat {
        /// The path.
        path: String,
        /// Which cluster.
        #[command(flatten)]
        target: Target,
    },
    /// Create a directory.
    Mkdir {
        /// The path.
        path: String,
        /// Which cluster.
        #[command(flatten)]
        target: Target,
    },
    /// Remove a file, or an empty directory.
    Rm {
        /// The path.
        path: String,
        /// Which cluster.
        #[command(flatten)]
        target: Target,
    },
    /// Copy a local file into BenchFS.
    Put {
        /// The local file.
        local: PathBuf,
        /// The BenchFS path.
        path: String,
        /// Which cluster.
        #[command(flatten)]
        target: Target,
    },
    /// Copy a BenchFS file to a local file.
    Get {
        /// The BenchFS path.
        path: String,
        /// The local file.
        local: PathBuf,
        /// Which cluster.
        #[command(flatten)]
        target: Target,
    },
    /// Print a BenchFS file on stdout.
    Cat {
        /// The BenchFS path.
        path: String,
        /// Which cluster.
        #[command(flatten)]
        target: Target,
    },
}

fn copy_out(fs: &BenchFS, path: &str, out: &mut dyn Write) -> Result<u64, CliError> {
    let fd = fs.open(path, OpenFlags::READ, 0)?;
    let mut buf = vec![0u8; COPY_BLOCK];
    let mut total = 0;
    loop {
        let n = fs.read(fd, &mut buf)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])?;
        total += n as u64;
    }
    fs.close(fd)?;
    Ok(total)
}

/// Runs a file command.
pub fn run(command: FileCommand) -> Result<(), CliError> {
    match command {
        FileCommand::Ls { path, target } => {
            let fs = target.connect()?;
            for e in fs.readdir(&path)? {
                let kind = if e.meta.is_dir() { 'd' } else { '-' };
                println!("{kind} {:>12} {}", e.meta.size, e.name);
            }
        }
        FileCommand::Stat { path, target } => {
            let m = target.connect()?.stat(&path)?;
            let kind = if m.is_dir() { "directory" } else { "file" };
            println!(
                "{path}: {kind}, size {}, mode {:o}, inode {:#x}, chunk size {}",
                m.size, m.mode, m.file_id, m.chunk_size
            );
        }
        FileCommand::Mkdir { path, target } => target.connect()?.mkdir(&path, 0o755)?,
        FileCommand::Rm { path, target } => {
            let fs = target.connect()?;
            if fs.stat(&path)?.is_dir() {
                fs.rmdir(&path)?;
            } else {
                fs.unlink(&path)?;
            }
        }
        FileCommand::Put {
            local,
            path,
            target,
        } => {
            let fs = target.connect()?;
            let mut file = std::fs::File::open(&local)?;
            let fd = fs.create(&path, 0o644)?;
            let mut buf = vec![0u8; COPY_BLOCK];
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                fs.write(fd, &buf[..n])?;
            }
            fs.close(fd)?;
        }
        FileCommand::Get {
            path,
            local,
            target,
        } => {
            let fs = target.connect()?;
            let mut file = std::fs::File::create(&local)?;
            copy_out(&fs, &path, &mut file)?;
        }
        FileCommand::Cat { path, target } => {
            let fs = target.connect()?;
            copy_out(&fs, &path, &mut std::io::stdout().lock())?;
        }
    }
    Ok(())
}
