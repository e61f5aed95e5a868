//! How a file is opened: [`OpenFlags`], and their translation from `open(2)` flags.

/// How a file is opened; combine with `|`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct OpenFlags(u32);

impl OpenFlags {
    /// Open for reading.
    pub const READ: OpenFlags = OpenFlags(1);
    /// Open for writing.
    pub const WRITE: OpenFlags = OpenFlags(1 << 1);
    /// Create the file if it does not exist.
    pub const CREATE: OpenFlags = OpenFlags(1 << 2);
    /// Cut the file to zero length on open.
    pub const TRUNC: OpenFlags = OpenFlags(1 << 3);
    /// Every write goes to the end of the file.
    pub const APPEND: OpenFlags = OpenFlags(1 << 4);
    /// With CREATE: fail with EEXIST if the file exists.
    pub const EXCL: OpenFlags = OpenFlags(1 << 5);
    /// Fail with ENOTDIR unless the path names a directory (with CREATE: EINVAL, as
    /// Linux says since 6.4).
    pub const DIRECTORY: OpenFlags = OpenFlags(1 << 6);
    /// Read and write.
    pub const RDWR: OpenFlags = OpenFlags(Self::READ.0 | Self::WRITE.0);
    const ALL: u32 = (1 << 7) - 1;

    /// The raw bits.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// Flags from raw bits; unknown bits are an error.
    pub fn from_bits(bits: u32) -> Option<OpenFlags> {
        (bits & !Self::ALL == 0).then_some(OpenFlags(bits))
    }

    /// Whether every flag in `other` is set.
    pub fn contains(self, other: OpenFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Flags from POSIX `open(2)` flags (O_RDONLY, O_WRONLY, O_RDWR, O_CREAT, O_TRUNC,
    /// O_APPEND, O_EXCL, O_DIRECTORY); other bits are ignored, as `open(2)` does.
    pub fn from_posix(flags: i32) -> OpenFlags {
        let mut out = match flags & libc::O_ACCMODE {
            libc::O_WRONLY => OpenFlags::WRITE,
            libc::O_RDWR => OpenFlags::RDWR,
            _ => OpenFlags::READ,
        };
        for (posix, ours) in [
            (libc::O_CREAT, OpenFlags::CREATE),
            (libc::O_TRUNC, OpenFlags::TRUNC),
            (libc::O_APPEND, OpenFlags::APPEND),
            (libc::O_EXCL, OpenFlags::EXCL),
            (libc::O_DIRECTORY, OpenFlags::DIRECTORY),
        ] {
            if flags & posix != 0 {
                out = out | ours;
            }
        }
        out
    }
}

impl std::ops::BitOr for OpenFlags {
    type Output = OpenFlags;
    fn bitor(self, rhs: OpenFlags) -> OpenFlags {
        OpenFlags(self.0 | rhs.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags() {
        let f = OpenFlags::from_posix(libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC);
        assert!(f.contains(OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNC));
        assert!(!f.contains(OpenFlags::READ));
        assert_eq!(OpenFlags::from_posix(libc::O_RDONLY), OpenFlags::READ);
        assert_eq!(
            OpenFlags::from_posix(libc::O_RDWR | libc::O_APPEND),
            OpenFlags::RDWR | OpenFlags::APPEND
        );
        assert_eq!(
            OpenFlags::from_posix(libc::O_RDONLY | libc::O_DIRECTORY),
            OpenFlags::READ | OpenFlags::DIRECTORY
        );
        assert_eq!(OpenFlags::from_bits(1 << 7), None);
        assert_eq!(OpenFlags::from_bits(3), Some(OpenFlags::RDWR));
    }
}
