//! The job secret file: the bytes servers demand proof of in every handshake (the
//! secret itself never crosses the wire). The file must be a regular file private to its
//! owner: a secret anyone on the node can read protects nothing.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The environment variable naming the secret file when no flag does.
pub const SECRET_FILE_ENV: &str = "BENCHFS_SECRET_FILE";

/// Longest secret, in bytes.
pub const SECRET_LEN_MAX: usize = 256;

/// Why a secret file cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// It could not be opened or read.
    #[error("secret file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// It is not a regular file.
    #[error("secret file {}: not a regular file", path.display())]
    NotAFile {
        /// The file.
        path: PathBuf,
    },
    /// Group or others may access it.
    #[error("secret file {path} is open to group or others (mode {mode:04o}); make it private with `chmod 600 {path}`", path = path.display())]
    NotPrivate {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// It is empty: a server would run with no secret at all, open to anyone.
    #[error("secret file {}: empty; put a secret in it (for example `head -c 32 /dev/urandom | base64 > FILE`)", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// It is longer than [`SECRET_LEN_MAX`].
    #[error("secret file {}: longer than {SECRET_LEN_MAX} bytes", path.display())]
    TooLong {
        /// The file.
        path: PathBuf,
    },
}

/// The secret file to use: `flag` if given, else the one [`SECRET_FILE_ENV`] names (unset
/// or empty: none).
pub fn secret_file(flag: Option<&Path>) -> Option<PathBuf> {
    flag.map(Path::to_path_buf).or_else(|| {
        std::env::var_os(SECRET_FILE_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
}

/// Reads the secret in `path`, refusing a file that is not private, not regular, empty or
/// too long.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, SecretError> {
    let io = |source| SecretError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(SecretError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretError::NotPrivate {
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut secret = Vec::new();
    // One byte more than allowed tells that it is too long.
    file.take(SECRET_LEN_MAX as u64 + 1)
        .read_to_end(&mut secret)
        .map_err(io)?;
    if secret.len() > SECRET_LEN_MAX {
        return Err(SecretError::TooLong {
            path: path.to_path_buf(),
        });
    }
    // One line break at the end is the file's, not the secret's: `echo`, `base64` and
    // editors add it, `printf` does not, and both files must hold the same secret.
    if secret.ends_with(b"\n") {
        secret.pop();
        if secret.ends_with(b"\r") {
            secret.pop();
        }
    }
    if secret.is_empty() {
        return Err(SecretError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(mode: u32, bytes: usize, ok: bool) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, vec![b's'; bytes]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let got = read_secret(&path);
        assert_eq!(got.is_ok(), ok, "mode {mode:o}, {bytes} bytes: {got:?}");
        if let Ok(secret) = got {
            assert_eq!(secret.len(), bytes);
        }
    }

    #[test]
    fn only_private_short_regular_files_are_secrets() {
        check(0o600, 13, true);
        check(0o400, SECRET_LEN_MAX, true);
        check(0o640, 13, false);
        check(0o604, 13, false);
        check(0o600, SECRET_LEN_MAX + 1, false);
        // Found by a hostile run: an empty file gave the servers no secret at all.
        check(0o600, 0, false);
        check(0o600, 1, true);
    }

    #[test]
    fn a_line_break_at_the_end_is_not_part_of_the_secret() {
        // Found by a hostile run: a secret written by `base64 > FILE` on one node and by
        // `printf` on another were different secrets.
        let dir = tempfile::tempdir().unwrap();
        let read = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            read_secret(&path)
        };
        let bare = read("bare", b"s3cret").unwrap();
        assert_eq!(read("lf", b"s3cret\n").unwrap(), bare);
        assert_eq!(read("crlf", b"s3cret\r\n").unwrap(), bare);
        assert_eq!(
            read("two", b"s3cret\n\n").unwrap(),
            b"s3cret\n",
            "only one goes"
        );
        assert!(matches!(
            read("newline", b"\n"),
            Err(SecretError::Empty { .. })
        ));
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            read_secret(dir.path()),
            Err(SecretError::NotAFile { .. } | SecretError::NotPrivate { .. })
        ));
        assert!(matches!(
            read_secret(&dir.path().join("none")),
            Err(SecretError::Io { .. })
        ));
    }
}
