//! Path checking: every path a user or the network gives is normalised here before it is
//! hashed, stored or compared.
//!
//! **Invariant:** a normalised path is absolute, starts with one '/', has no empty, "." or
//! ".." components, no NUL byte, no trailing '/' (except the root itself), and respects
//! [`PATH_LEN_MAX`] and
//! [`NAME_LEN_MAX`]. Paths never become names on disk: chunks are
//! named by inode number.

use crate::Status;

use crate::limits::{NAME_LEN_MAX, PATH_LEN_MAX};

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The path is the empty string.
    #[error("path is empty")]
    Empty,
    /// The path does not start with '/'.
    #[error("path is not absolute")]
    Relative,
    /// The path has a ".." component.
    #[error("path has a '..' component")]
    DotDot,
    /// The path holds a NUL byte.
    #[error("path holds a NUL byte")]
    Nul,
    /// The path is longer than PATH_LEN_MAX bytes.
    #[error("path is longer than {PATH_LEN_MAX} bytes")]
    TooLong,
    /// A component is longer than NAME_LEN_MAX bytes.
    #[error("a path component is longer than {NAME_LEN_MAX} bytes")]
    NameTooLong,
    /// The operation needs a path other than the root.
    #[error("the root directory cannot be used here")]
    Root,
}

impl PathError {
    /// The wire status for this error: ENAMETOOLONG for lengths, ENOENT for the empty
    /// path (as POSIX calls give it), EINVAL otherwise.
    pub fn status(self) -> Status {
        match self {
            PathError::TooLong | PathError::NameTooLong => Status::NameTooLong,
            PathError::Empty => Status::NotFound,
            PathError::Root => Status::Exists,
            _ => Status::InvalidArgument,
        }
    }
}

impl From<PathError> for Status {
    fn from(e: PathError) -> Status {
        e.status()
    }
}

/// Checks `path` and returns its normal form: "//a/./b/" becomes "/a/b".
pub fn normalize(path: &str) -> Result<String, PathError> {
    // Callers almost always give a path in normal form already: one pass checks it, where
    // splitting it into components and joining them again was a twentieth of an open.
    if path.len() <= PATH_LEN_MAX && is_normal(path.as_bytes()) {
        return Ok(path.to_owned());
    }
    normalize_components(path)
}

/// Whether `path` is absolute and in normal form, with no NUL, no empty, "." or ".."
/// component and no name longer than [`NAME_LEN_MAX`].
fn is_normal(path: &[u8]) -> bool {
    if path == b"/" {
        return true;
    }
    if path.first() != Some(&b'/') {
        return false;
    }
    let mut start = 1;
    for end in 1..=path.len() {
        match path.get(end) {
            Some(0) => return false,
            Some(b'/') | None => {
                let name = &path[start..end];
                if name.is_empty() || name == b"." || name == b".." || name.len() > NAME_LEN_MAX {
                    return false;
                }
                start = end + 1;
            }
            Some(_) => {}
        }
    }
    true
}

/// [`normalize`] by splitting `path` into its components.
fn normalize_components(path: &str) -> Result<String, PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.contains('\0') {
        return Err(PathError::Nul);
    }
    if !path.starts_with('/') {
        return Err(PathError::Relative);
    }
    if path.len() > PATH_LEN_MAX {
        return Err(PathError::TooLong);
    }
    let mut out = String::with_capacity(path.len());
    for component in path.split('/') {
        match component {
            "" | "." => continue,
            ".." => return Err(PathError::DotDot),
            name if name.len() > NAME_LEN_MAX => return Err(PathError::NameTooLong),
            name => {
                out.push('/');
                out.push_str(name);
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Splits a normalised path other than "/" into its parent and its last component.
pub fn split_parent(path: &str) -> Result<(&str, &str), PathError> {
    if path == "/" {
        return Err(PathError::Root);
    }
    let at = path.rfind('/').ok_or(PathError::Relative)?;
    let parent = if at == 0 { "/" } else { &path[..at] };
    Ok((parent, &path[at + 1..]))
}

/// Joins a normalised directory path and a child name.
pub fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// Where normalised `path` is after normalised `from` was renamed to `to`: `None` if
/// `path` is neither `from` nor under it.
pub fn moved(path: &str, from: &str, to: &str) -> Option<String> {
    if path == from {
        return Some(to.to_string());
    }
    let rest = path.strip_prefix(from)?;
    (rest.starts_with('/') && from != "/").then(|| format!("{to}{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moved_follows_a_rename_of_the_path_or_an_ancestor() {
        assert_eq!(moved("/a", "/a", "/b").as_deref(), Some("/b"));
        assert_eq!(moved("/a/x/y", "/a", "/b/c").as_deref(), Some("/b/c/x/y"));
        assert_eq!(moved("/ab", "/a", "/b"), None);
        assert_eq!(moved("/c", "/a", "/b"), None);
    }

    fn check(input: &str, expected: Result<&str, PathError>) {
        assert_eq!(
            normalize(input).as_deref().map_err(|e| *e),
            expected,
            "input {input:?}"
        );
    }

    #[test]
    fn normalizes() {
        check("/", Ok("/"));
        check("///", Ok("/"));
        check("/a", Ok("/a"));
        check("//a//b/", Ok("/a/b"));
        check("/a/./b/.", Ok("/a/b"));
        check("/a b/ü", Ok("/a b/ü"));
        check("/...", Ok("/..."));
    }

    #[test]
    fn the_one_pass_check_agrees_with_splitting_into_components() {
        let long = "x".repeat(NAME_LEN_MAX);
        let too_long = "x".repeat(NAME_LEN_MAX + 1);
        let parts = ["", ".", "..", "...", "a", "ü", "a\0b", &long, &too_long];
        for first in parts {
            for second in parts {
                for (lead, trail) in [("/", ""), ("/", "/"), ("//", ""), ("", "")] {
                    let path = format!("{lead}{first}/{second}{trail}");
                    let expected = normalize_components(&path);
                    assert_eq!(normalize(&path), expected, "input {path:?}");
                    if let Ok(normal) = expected {
                        assert!(
                            is_normal(normal.as_bytes()),
                            "{normal:?} is not seen normal"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn rejects_bad_paths() {
        check("", Err(PathError::Empty));
        check("a/b", Err(PathError::Relative));
        check("./a", Err(PathError::Relative));
        check("/a/../b", Err(PathError::DotDot));
        check("/..", Err(PathError::DotDot));
        check("/a\0b", Err(PathError::Nul));
        check(
            &format!("/{}", "x".repeat(NAME_LEN_MAX + 1)),
            Err(PathError::NameTooLong),
        );
        check(
            &format!("/{}", "x".repeat(NAME_LEN_MAX)),
            Ok(&format!("/{}", "x".repeat(NAME_LEN_MAX))),
        );
        let long = "/abcdefg".repeat(PATH_LEN_MAX / 8 + 1);
        check(&long, Err(PathError::TooLong));
        assert_eq!(PathError::TooLong.status().errno(), libc::ENAMETOOLONG);
        assert_eq!(PathError::DotDot.status().errno(), libc::EINVAL);
    }

    #[test]
    fn splits_and_joins() {
        assert_eq!(split_parent("/a"), Ok(("/", "a")));
        assert_eq!(split_parent("/a/b/c"), Ok(("/a/b", "c")));
        assert_eq!(split_parent("/"), Err(PathError::Root));
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(join("/a", "b"), "/a/b");
    }
}
