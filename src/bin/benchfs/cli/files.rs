//! File commands against a running cluster: ls, stat, mkdir, rm, put, get, cat.

use std::fmt::Display;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use super::cluster::Target;
use super::staged::StagedFile;
use super::CliError;
use benchfs::blocking::{ApiError, BenchFS, Fd, OpenFlags};
use benchfs::client::fs::ReplicaCheck;
use benchfs::proto::meta::EntryKind;

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
    /// Check that every replica of a path's record, and of each chunk of its file, holds
    /// the same; fails if any differ or cannot be asked.
    Verify {
        /// The path.
        path: String,
        /// Below a directory too, every path.
        #[arg(short, long)]
        recursive: bool,
        /// Copy each chunk whose copies differ from the replica that kept its store
        /// longest to the others (a server back with an empty store gets its chunks
        /// again). Not while the files are written: a write that lands between a chunk's
        /// read and its copy is undone on the replicas copied to.
        #[arg(long)]
        repair: bool,
        /// Which cluster.
        #[command(flatten)]
        target: Target,
    },
    /// Copy a local file into BenchFS (into a directory: under the file's own name).
    Put {
        /// The local file (`-`: standard input).
        local: PathBuf,
        /// The BenchFS path.
        path: String,
        /// Which cluster.
        #[command(flatten)]
        target: Target,
    },
    /// Copy a BenchFS file to a local file (into a directory: under the file's own name).
    Get {
        /// The BenchFS path.
        path: String,
        /// The local file (`-`: standard output).
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

/// Why a copy between a local file and BenchFS stopped.
enum CopyError {
    /// A BenchFS call failed; the error names the path and, for a call to a server, the
    /// server.
    Remote(ApiError),
    /// Reading or writing the local side failed.
    Local(std::io::Error),
}

impl CopyError {
    /// The error as a message, naming the local side `local`.
    fn describe(&self, local: &dyn Display) -> String {
        match self {
            CopyError::Remote(e) => e.to_string(),
            CopyError::Local(e) => format!("{local}: {e}"),
        }
    }
}

/// Copies the open BenchFS file `fd` from where it stands to its end into `out`.
fn copy_out(fs: &BenchFS, fd: Fd, out: &mut dyn Write) -> Result<u64, CopyError> {
    let mut buf = vec![0u8; COPY_BLOCK];
    let mut total = 0;
    loop {
        let n = fs.read(fd, &mut buf).map_err(CopyError::Remote)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).map_err(CopyError::Local)?;
        total += n as u64;
    }
    out.flush().map_err(CopyError::Local)?;
    Ok(total)
}

/// Copies `input` to its end into the open BenchFS file `fd`.
fn copy_in(fs: &BenchFS, fd: Fd, input: &mut dyn Read) -> Result<u64, CopyError> {
    let mut buf = vec![0u8; COPY_BLOCK];
    let mut total = 0;
    loop {
        let n = match input.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Local(e)),
        };
        if n == 0 {
            return Ok(total);
        }
        fs.write(fd, &buf[..n]).map_err(CopyError::Remote)?;
        total += n as u64;
    }
}

/// Opens the local source of a put, and checks that it can be read as a file (a
/// directory opens, but reading it fails), before anything in BenchFS is touched.
fn open_source(local: &Path) -> Result<File, String> {
    let file = File::open(local).map_err(|e| format!("cannot open {}: {e}", local.display()))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot stat {}: {e}", local.display()))?;
    if meta.is_dir() {
        return Err(format!("{} is a directory, not a file", local.display()));
    }
    Ok(file)
}

/// `benchfs put`: the source is checked before the BenchFS file is created (or truncated).
fn put(target: &Target, local: &Path, path: &str) -> Result<(), CliError> {
    let fail =
        |e: &dyn Display| -> CliError { format!("put {} -> {path}: {e}", local.display()).into() };
    let mut source: Box<dyn Read> = match local.as_os_str() == "-" {
        true => Box::new(std::io::stdin().lock()),
        false => Box::new(open_source(local).map_err(|e| fail(&e))?),
    };
    let fs = target.connect()?;
    // Into a directory under the local file's own name, as `cp` copies.
    let into_dir;
    let path = match (fs.stat(path), path.ends_with('/')) {
        (Ok(meta), _) if meta.is_dir() => match local.file_name().and_then(|n| n.to_str()) {
            Some(name) if local.as_os_str() != "-" => {
                into_dir = format!("{}/{name}", path.trim_end_matches('/'));
                into_dir.as_str()
            }
            _ => {
                return Err(fail(&format!(
                    "{path} is a directory; name the file to write"
                )))
            }
        },
        // A trailing '/' names a directory, which is not there (ENOENT, or ENOTDIR for a
        // file), where a create would say EISDIR of what does not exist.
        (Err(e), true) => return Err(fail(&e)),
        _ => path,
    };
    let fd = fs.create(path, 0o644).map_err(|e| fail(&e))?;
    let copied = copy_in(&fs, fd, &mut source);
    let closed = fs.close(fd);
    match (copied, closed) {
        (Ok(_), Ok(())) => Ok(()),
        (Err(e), _) => Err(fail(&format!(
            "{} ({path} is left incomplete)",
            e.describe(&format!("reading {}", local.display()))
        ))),
        // Written behind, the bytes may fail at close (a full store): the file is left
        // as far as they got, as `cp` leaves it.
        (Ok(_), Err(e)) => Err(fail(&format!("{e} ({path} is left incomplete)"))),
    }
}

/// Where `get` writes `local`: through a symbolic link to its target, as `cp` does; into
/// anything that is not a regular file (a device such as /dev/null, a pipe) in place,
/// since a rename would replace it with a file; anything else through a staged copy.
fn destination(local: &Path) -> (PathBuf, bool) {
    // As the kernel follows the path: /proc's links to a pipe (/dev/stdout) name no path
    // that could be followed by hand.
    if std::fs::metadata(local).is_ok_and(|m| !m.is_file() && !m.is_dir()) {
        return (local.to_path_buf(), true);
    }
    let mut dest = local.to_path_buf();
    // A chain of links ends within a few hops or is a loop, which the open then reports.
    for _ in 0..40 {
        match std::fs::read_link(&dest) {
            Ok(to) => dest = dest.parent().map_or(to.clone(), |dir| dir.join(&to)),
            Err(_) => break,
        }
    }
    (dest, false)
}

/// `benchfs get`: a regular local file is replaced only by a complete copy.
fn get(target: &Target, path: &str, local: &Path) -> Result<(), CliError> {
    let fail =
        |e: &dyn Display| -> CliError { format!("get {path} -> {}: {e}", local.display()).into() };
    let fs = target.connect()?;
    let fd = fs.open(path, OpenFlags::READ, 0).map_err(|e| fail(&e))?;
    if fs.fstat(fd).is_ok_and(|meta| meta.is_dir()) {
        let _ = fs.close(fd);
        return Err(fail(&format!("{path} is a directory")));
    }
    // Into a directory under the file's own name, as `cp` copies.
    let into_dir;
    let local = match (local.is_dir(), path.rsplit('/').next()) {
        (true, Some(name)) if !name.is_empty() => {
            into_dir = local.join(name);
            into_dir.as_path()
        }
        _ => local,
    };
    let (dest, in_place) = destination(local);
    let result = if in_place {
        let writing = format!("writing {}", dest.display());
        std::fs::OpenOptions::new()
            .write(true)
            .open(&dest)
            .map_err(|e| format!("{writing}: {e}"))
            .and_then(|mut out| copy_out(&fs, fd, &mut out).map_err(|e| e.describe(&writing)))
            .map(drop)
    } else {
        StagedFile::create(&dest).and_then(|mut out| {
            let tmp = format!("writing {}", out.tmp_path().display());
            copy_out(&fs, fd, out.file()).map_err(|e| e.describe(&tmp))?;
            out.commit()
        })
    };
    let closed = fs.close(fd);
    result.map_err(|e| fail(&e))?;
    closed.map_err(|e| fail(&e))
}

/// `benchfs cat` (and `get F -`, which `command` names in errors): a reader that stops
/// early (`benchfs cat f | head`) is not an error.
fn cat(target: &Target, path: &str, command: &str) -> Result<(), CliError> {
    let fs = target.connect()?;
    let fd = fs.open(path, OpenFlags::READ, 0)?;
    let copied = copy_out(&fs, fd, &mut std::io::stdout().lock());
    let closed = fs.close(fd);
    match copied {
        Ok(_) => {}
        Err(CopyError::Local(e)) if e.kind() == ErrorKind::BrokenPipe => {}
        Err(e) => {
            return Err(format!("{command}: {}", e.describe(&"writing standard output")).into())
        }
    }
    Ok(closed?)
}

/// A name as `ls` and `stat` print it: as it is, or quoted with its control characters
/// escaped (Rust's string syntax), so that every entry is one line and a name holding
/// ` -> ` does not read as a link.
fn shown(name: &str) -> std::borrow::Cow<'_, str> {
    match name.chars().any(char::is_control) || name.contains(" -> ") {
        true => format!("{name:?}").into(),
        false => name.into(),
    }
}

/// `benchfs ls`: one line per entry of directory `path`, or for `path` itself if it is not
/// a directory.
fn ls(fs: &BenchFS, path: &str) -> Result<(), CliError> {
    let mut out = String::new();
    // A link whose target cannot be read is listed still, as `ls -l` lists it, and named
    // after the listing: one lost link does not hide its directory.
    let mut unreadable = Vec::new();
    // As `ls -l` shows them: the kind first, and where a link points after its name.
    let mut line = |meta: &benchfs::api::FileMetadata, name: &str, full: &str| {
        let (kind, target) = match meta.kind {
            EntryKind::Directory => ('d', String::new()),
            EntryKind::Symlink => match fs.block_on(fs.client().readlink(full)) {
                Ok(target) => ('l', format!(" -> {}", shown(&target))),
                Err(e) => {
                    unreadable.push(e.to_string());
                    ('l', " -> ?".to_string())
                }
            },
            EntryKind::File => ('-', String::new()),
        };
        format!("{kind} {:>12} {}{target}\n", meta.size, shown(name))
    };
    match fs.readdir(path) {
        Ok(entries) => {
            let dir = benchfs::path::normalize(path).map_err(|e| format!("ls {path}: {e}"))?;
            for e in entries {
                out += &line(&e.meta, &e.name, &benchfs::path::join(&dir, &e.name));
            }
        }
        // A file lists as itself, as `ls` lists it.
        Err(e) if e.status() == Some(benchfs::proto::Status::NotDir) => {
            out += &line(&fs.stat(path)?, path, path);
        }
        Err(e) => return Err(e.into()),
    }
    super::print_out(&out)?;
    if !unreadable.is_empty() {
        return Err(unreadable.join("\n").into());
    }
    Ok(())
}

/// `benchfs stat`: what `path` is, its size, mode and inode number.
fn stat(fs: &BenchFS, path: &str) -> Result<(), CliError> {
    let m = fs.stat(path)?;
    let (kind, chunks) = match m.kind {
        // A directory has no chunks (and "/" no record to hold a chunk size).
        EntryKind::Directory => ("directory".to_string(), String::new()),
        EntryKind::Symlink => {
            let target = fs.block_on(fs.client().readlink(path))?;
            (
                format!("symbolic link to {}", shown(&target)),
                String::new(),
            )
        }
        EntryKind::File => ("file".to_string(), format!(", chunk size {}", m.chunk_size)),
    };
    outln!(
        "{}: {kind}, size {}, mode {:o}, inode {:#x}{chunks}",
        shown(path),
        m.size,
        m.mode,
        m.file_id
    );
    Ok(())
}

/// What `benchfs verify` counted over the paths it checked.
#[derive(Default)]
struct VerifyCounts {
    paths: u64,
    chunks: u64,
    differences: u64,
    unasked: u64,
    repaired: u64,
}

/// `benchfs verify`: one line for each path that agrees, one for each difference, replica
/// not asked (and chunk copied, with `--repair`), then the counts. Below the path given,
/// a path that cannot be checked or listed (removed meanwhile, a directory whose listing
/// needs a server that does not answer) is a line too, and the rest is still checked.
fn verify(fs: &BenchFS, path: &str, (recursive, repair): (bool, bool)) -> Result<(), CliError> {
    let given = path;
    let mut pending = vec![path.to_string()];
    let mut counts = VerifyCounts::default();
    while let Some(path) = pending.pop() {
        let checked = match repair {
            true => fs.block_on(fs.client().repair_replicas(&path)),
            false => fs.block_on(fs.client().check_replicas(&path)),
        };
        let check = match checked {
            Ok(check) => check,
            Err(e) if path != given => {
                counts.unasked += 1;
                outln!("{}: {e}", shown(&path));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        print_check(&check, &mut counts)?;
        if recursive && check.meta.is_dir() {
            match fs.readdir(&check.path) {
                Ok(entries) => {
                    let mut below: Vec<String> = entries
                        .into_iter()
                        .map(|e| benchfs::path::join(&check.path, &e.name))
                        .collect();
                    // Taken from the end: in name order.
                    below.sort_unstable_by(|a, b| b.cmp(a));
                    pending.extend(below);
                }
                Err(e) => {
                    counts.unasked += 1;
                    outln!("{}: not listed: {e}", shown(&check.path));
                }
            }
        }
    }
    let VerifyCounts {
        paths,
        chunks,
        differences,
        unasked,
        repaired,
    } = counts;
    match repair {
        true => outln!(
            "{paths} paths, {chunks} chunks, {repaired} repaired, {differences} differences \
             left, {unasked} not asked"
        ),
        false => {
            outln!("{paths} paths, {chunks} chunks, {differences} differences, {unasked} not asked")
        }
    }
    if differences + unasked > 0 {
        return Err(format!("verify {given}: replicas differ or could not be asked").into());
    }
    Ok(())
}

/// Prints what `verify` found of one path, and counts it.
fn print_check(check: &ReplicaCheck, counts: &mut VerifyCounts) -> Result<(), CliError> {
    counts.paths += 1;
    counts.chunks += check.chunks;
    counts.differences += check.differences.len() as u64;
    counts.unasked += check.unasked.len() as u64;
    counts.repaired += check.repaired.len() as u64;
    let path = shown(&check.path);
    let mut out = String::new();
    if check.agrees() && check.repaired.is_empty() {
        let chunks = if check.chunks == 1 { "" } else { "s" };
        out += &match check.replicas {
            0 => format!("{path}: the root, no record: every server answers\n"),
            1 => format!(
                "{path}: 1 replica: nothing to compare ({} chunk{chunks})\n",
                check.chunks
            ),
            n => format!(
                "{path}: {n} replicas agree ({} chunk{chunks})\n",
                check.chunks
            ),
        };
    }
    for line in check
        .differences
        .iter()
        .chain(&check.unasked)
        .chain(&check.repaired)
    {
        out += &format!("{path}: {line}\n");
    }
    super::print_out(&out)?;
    Ok(())
}

/// Runs a file command.
pub fn run(command: FileCommand) -> Result<(), CliError> {
    match command {
        FileCommand::Ls { path, target } => ls(&target.connect()?, &path)?,
        FileCommand::Stat { path, target } => stat(&target.connect()?, &path)?,
        FileCommand::Verify {
            path,
            recursive,
            repair,
            target,
        } => verify(&target.connect()?, &path, (recursive, repair))?,
        FileCommand::Mkdir { path, target } => target.connect()?.mkdir(&path, 0o755)?,
        FileCommand::Rm { path, target } => {
            if benchfs::path::normalize(&path).is_ok_and(|p| p == "/") {
                return Err(format!("rm {path}: the root directory cannot be removed").into());
            }
            let fs = target.connect()?;
            // Unlink first, so an error names the removal, not a lookup before it.
            match fs.unlink(&path) {
                Err(e) if e.errno() == libc::EISDIR => fs.rmdir(&path)?,
                unlinked => unlinked?,
            }
        }
        FileCommand::Put {
            local,
            path,
            target,
        } => put(&target, &local, &path)?,
        // `-` is standard output, as `put -` reads standard input.
        FileCommand::Get {
            path,
            local,
            target,
        } if local.as_os_str() == "-" => cat(&target, &path, &format!("get {path} -> -"))?,
        FileCommand::Get {
            path,
            local,
            target,
        } => get(&target, &path, &local)?,
        FileCommand::Cat { path, target } => cat(&target, &path, &format!("cat {path}"))?,
    }
    Ok(())
}
