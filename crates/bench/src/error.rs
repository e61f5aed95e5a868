//! The one error type of the framework: a sentence that names what failed, where.

use std::fmt;

/// A benchmark failure, with the path, server or rank it concerns in its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchError(pub String);

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BenchError {}

impl From<String> for BenchError {
    fn from(message: String) -> Self {
        BenchError(message)
    }
}

impl From<&str> for BenchError {
    fn from(message: &str) -> Self {
        BenchError(message.to_owned())
    }
}

/// Results of the framework.
pub type Result<T, E = BenchError> = std::result::Result<T, E>;

/// An error about a local file: what was being done, the file, and the system's reason.
pub(crate) fn io_error(what: &str, path: &std::path::Path, e: std::io::Error) -> BenchError {
    BenchError(format!("cannot {what} {}: {e}", path.display()))
}

/// `e`, a failed read, naming the rank that read, as a failed verify does.
pub(crate) fn read_by(e: BenchError, rank: u32) -> BenchError {
    BenchError(format!("{} (read by rank {rank})", e.0))
}
