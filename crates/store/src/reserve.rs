//! [`DiskReserve`]: disk room held for bytes a store acknowledged and has yet to write.
//!
//! The tiered store acknowledges a write once its memory tier has it and writes it to
//! disk later; a full disk then would lose it. So it holds, in one file of its data
//! directory, as many blocks as its memory tier owes the disk, and lets them go just
//! before the write-back that needs them. The kernel counts those blocks against every
//! writer of the file system, other servers sharing the disk included, which a count of
//! our own against `statvfs` would not.

use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::StoreError;

/// The reserve file in `data_dir`. Only its store uses it, so a run that did not stop
/// leaves nothing there that a new run must keep; its presence says a tiered store ran
/// there.
pub const RESERVE_FILE: &str = "tier-reserve";

/// Held beyond what is asked, so a sequential writer grows the file once a step, not on
/// every write. Given back once more than twice this is held beyond what is owed.
const STEP: u64 = 1 << 20;

/// Blocks of the disk kept for a store (see the module docs).
#[derive(Debug)]
pub(crate) struct DiskReserve {
    /// `None` where the file system cannot allocate ahead (`fallocate` unsupported): then
    /// nothing is held, and a full disk fails the write-back.
    file: Option<File>,
    held: Cell<u64>,
}

impl DiskReserve {
    /// Opens `data_dir/tier-reserve`, emptied, and checks that the file system can hold
    /// room ahead of writes.
    pub(crate) fn open(data_dir: &Path) -> Result<DiskReserve, StoreError> {
        let path = data_dir.join(RESERVE_FILE);
        let io_error = |op, source| StoreError::Io { op, source };
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| io_error("open tier-reserve", e))?;
        let reserve = DiskReserve {
            file: Some(file),
            held: Cell::new(0),
        };
        match reserve.allocate(0, 1) {
            Ok(()) => {
                reserve.release_to(0);
                Ok(reserve)
            }
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                tracing::warn!(
                    path = %path.display(),
                    "this file system cannot allocate ahead (fallocate): the memory tier's \
                     unsynced writes are not guaranteed room on disk, and a full disk fails \
                     their write-back"
                );
                drop(reserve);
                let _ = std::fs::remove_file(&path);
                Ok(DiskReserve {
                    file: None,
                    held: Cell::new(0),
                })
            }
            // A disk too full for one block still opens: writes to it then fail.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => Ok(reserve),
            Err(e) => Err(io_error("fallocate tier-reserve", e)),
        }
    }

    /// Holds at least `owed` bytes of disk in all; [`StoreError::NoSpace`] if the file
    /// system has no room for them (then as much as before stays held).
    pub(crate) fn hold(&self, owed: u64) -> Result<(), StoreError> {
        let held = self.held.get();
        if owed <= held || self.file.is_none() {
            return Ok(());
        }
        let ahead = self.allocate(held, owed + STEP - held);
        let exact = || self.allocate(held, owed - held);
        match ahead.or_else(|_| exact()) {
            Ok(()) => Ok(()),
            Err(e) => {
                // A failed fallocate may keep part of what it allocated, and the length.
                if let Some(file) = &self.file {
                    let _ = file.set_len(held);
                }
                self.held.set(held);
                Err(StoreError::io("fallocate tier-reserve", e, owed - held))
            }
        }
    }

    /// Gives back what is held beyond `owed`, once that is more than a step or two:
    /// at once when `owed` is 0, so an idle store holds nothing.
    pub(crate) fn settle(&self, owed: u64) {
        let held = self.held.get();
        if held > owed + 2 * STEP || (owed == 0 && held > 0) {
            self.release_to(owed);
        }
    }

    /// Holds exactly `owed` bytes or fewer: the room a write-back is about to take.
    pub(crate) fn release_to(&self, owed: u64) {
        let Some(file) = &self.file else {
            return;
        };
        if owed >= self.held.get() {
            return;
        }
        match file.set_len(owed) {
            Ok(()) => self.held.set(owed),
            Err(e) => tracing::warn!(error = %e, "cannot shrink the tier reserve"),
        }
    }

    /// Bytes held now.
    pub(crate) fn held(&self) -> u64 {
        self.held.get()
    }

    /// Allocates `len` bytes from `offset` and records the file's new length.
    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        fallocate(file, offset, len)?;
        self.held.set(offset + len);
        Ok(())
    }
}

/// Allocates `len` bytes of `file` from `offset` (`fallocate(2)`, mode 0: the length
/// grows to cover them). EOPNOTSUPP is the caller's to judge.
pub(crate) fn fallocate(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(at), Ok(n)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::from_raw_os_error(libc::EFBIG));
    };
    // SAFETY: a plain system call on a descriptor `file` owns; no memory is passed.
    if unsafe { libc::fallocate(file.as_raw_fd(), 0, at, n) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allocated(dir: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(dir.join(RESERVE_FILE)).unwrap().blocks() * 512
    }

    #[test]
    fn holds_what_is_owed_ahead_and_gives_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let reserve = DiskReserve::open(dir.path()).unwrap();
        assert_eq!(reserve.held(), 0);
        reserve.hold(10_000).unwrap();
        assert_eq!(reserve.held(), 10_000 + STEP);
        assert!(allocated(dir.path()) >= 10_000 + STEP);
        // Within the step: no change.
        reserve.hold(STEP).unwrap();
        assert_eq!(reserve.held(), 10_000 + STEP);
        reserve.settle(5_000);
        assert_eq!(reserve.held(), 10_000 + STEP, "a step's slack is kept");
        reserve.release_to(4_096);
        assert_eq!(reserve.held(), 4_096);
        reserve.settle(0);
        assert_eq!(reserve.held(), 0);
        assert_eq!(allocated(dir.path()), 0);
    }

    #[test]
    fn a_run_that_did_not_stop_leaves_nothing_held() {
        let dir = tempfile::tempdir().unwrap();
        let reserve = DiskReserve::open(dir.path()).unwrap();
        reserve.hold(3 * STEP).unwrap();
        drop(reserve);
        assert!(allocated(dir.path()) >= 3 * STEP);
        let reserve = DiskReserve::open(dir.path()).unwrap();
        assert_eq!(reserve.held(), 0);
        assert_eq!(allocated(dir.path()), 0);
    }
}
