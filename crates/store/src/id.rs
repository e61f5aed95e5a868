//! Chunk identity and the on-disk names derived from it.
//!
//! A chunk lives at `<data_dir>/chunks/<file_id>/<index>`, each component exactly 16
//! lowercase hex digits (`{:016x}`). The path is built from the two integers only, so no
//! client input can make it leave `data_dir`; parsing accepts exactly that form and
//! nothing else, so stray files are skipped rather than misread.

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};

/// Name of the directory under `data_dir` that holds every chunk.
pub(crate) const CHUNKS_DIR: &str = "chunks";
/// Length of one name component: a `u64` in hex.
const NAME_LEN: usize = 16;

/// One chunk of one file: the `index`-th `chunk_size` bytes of inode `file_id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId {
    /// Cluster-unique inode number, allocated by the metadata layer.
    pub file_id: u64,
    /// Chunk number within the file.
    pub index: u64,
}

impl ChunkId {
    /// The chunk `index` of file `file_id`.
    pub const fn new(file_id: u64, index: u64) -> ChunkId {
        ChunkId { file_id, index }
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}/{:016x}", self.file_id, self.index)
    }
}

/// `<data_dir>/chunks`.
pub(crate) fn chunks_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(CHUNKS_DIR)
}

/// `<data_dir>/chunks/<file_id>`.
pub(crate) fn file_dir(data_dir: &Path, file_id: u64) -> PathBuf {
    chunks_dir(data_dir).join(format!("{file_id:016x}"))
}

/// `<data_dir>/chunks/<file_id>/<index>`.
pub(crate) fn chunk_path(data_dir: &Path, id: ChunkId) -> PathBuf {
    file_dir(data_dir, id.file_id).join(format!("{:016x}", id.index))
}

/// Suffix of a chunk file written whole under another name before it is renamed into
/// place, which holds disk room for that write until then (see `ChunkDir::hold_whole`
/// and `ChunkDir::begin_whole`).
pub(crate) const PARTIAL_SUFFIX: &str = ".partial";

/// Where chunk `id` is written whole before its rename to [`chunk_path`].
pub(crate) fn partial_path(data_dir: &Path, id: ChunkId) -> PathBuf {
    file_dir(data_dir, id.file_id).join(format!("{:016x}{PARTIAL_SUFFIX}", id.index))
}

/// Parses one name component: exactly 16 lowercase hex digits, as written by
/// [`chunk_path`]. Anything else (uppercase, signs, other lengths, non-UTF-8) is `None`.
pub(crate) fn parse_name(name: &OsStr) -> Option<u64> {
    let name = name.to_str()?;
    let valid = name.len() == NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !valid {
        return None;
    }
    u64::from_str_radix(name, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, expected: Option<u64>) {
        assert_eq!(parse_name(OsStr::new(name)), expected, "{name:?}");
    }

    #[test]
    fn parse() {
        check("0000000000000000", Some(0));
        check("00000000000000ff", Some(255));
        check("ffffffffffffffff", Some(u64::MAX));
        check("FFFFFFFFFFFFFFFF", None);
        check("fffffffffffffff", None);
        check("0ffffffffffffffff", None);
        check("+fffffffffffffff", None);
        check("", None);
        check("..", None);
        check("000000000000000g", None);
        check("0000000000000000.tmp", None);
    }

    #[test]
    fn round_trip_stays_inside() {
        let root = Path::new("/data");
        for id in [
            ChunkId::new(0, 0),
            ChunkId::new(u64::MAX, u64::MAX),
            ChunkId::new(1 << 63, 7),
        ] {
            let path = chunk_path(root, id);
            assert!(path.starts_with("/data/chunks"));
            assert_eq!(path.components().count(), 5, "{path:?}");
            let index = parse_name(path.file_name().unwrap());
            let file_id = parse_name(path.parent().unwrap().file_name().unwrap());
            assert_eq!((file_id, index), (Some(id.file_id), Some(id.index)));
            assert_eq!(
                path,
                Path::new("/data/chunks").join(id.to_string()),
                "Display matches the relative path"
            );
        }
    }
}
