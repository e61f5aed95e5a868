//! A small disk for tests that fill one: a tmpfs mounted on a directory.

use std::path::{Path, PathBuf};

/// A tmpfs mounted on a directory, detached when dropped (lazily, so a server a failed
/// test left running does not keep it).
pub struct SmallDisk(PathBuf);

impl SmallDisk {
    /// Mounts a tmpfs of `size` on `dir` (made if needed); `None`, with a skip reported,
    /// without root.
    pub fn mount(dir: &Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(dir).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            super::skip(&format!("a {size} disk"), "mounting a tmpfs needs root");
            return None;
        }
        Some(SmallDisk(dir.to_path_buf()))
    }

    /// Bytes free for an unprivileged writer now.
    pub fn free_bytes(&self) -> u64 {
        let path = std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: statvfs is plain integers, for which all zeros is a value.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a valid C string and a struct the call fills.
        assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut stat) }, 0);
        stat.f_bavail * stat.f_frsize
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}
