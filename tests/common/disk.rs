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

/// An ext4 file system in a loop device mounted on a directory with `errors=remount-ro`
/// (Debian's default), so that an error makes it read-only under whatever has files
/// open on it; detached (lazily) and its image removed when dropped.
pub struct Ext4Disk {
    dir: PathBuf,
    image: PathBuf,
}

impl Ext4Disk {
    /// Makes a `megabytes` ext4 image beside `dir` and mounts it on `dir` (made if
    /// needed); `None`, with a skip reported, without root.
    pub fn mount(dir: &Path, megabytes: u64) -> Option<Ext4Disk> {
        std::fs::create_dir_all(dir).unwrap();
        let image = dir.with_extension("ext4.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(megabytes << 20)
            .unwrap();
        let run = |program: &str, args: &[&std::ffi::OsStr]| {
            std::process::Command::new(program)
                .args(args)
                .stdout(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let made = run(
            "mkfs.ext4",
            &["-q".as_ref(), "-F".as_ref(), image.as_os_str()],
        );
        let mounted = made
            && run(
                "mount",
                &[
                    "-o".as_ref(),
                    "loop,errors=remount-ro".as_ref(),
                    image.as_os_str(),
                    dir.as_os_str(),
                ],
            );
        if !mounted {
            let _ = std::fs::remove_file(&image);
            super::skip("an ext4 disk", "mkfs.ext4 and a loop mount need root");
            return None;
        }
        Some(Ext4Disk {
            dir: dir.to_path_buf(),
            image,
        })
    }

    /// Makes the file system fail as on a device error (ext4's `trigger_fs_error`), which
    /// turns it read-only.
    pub fn fail(&self) {
        let source = std::process::Command::new("findmnt")
            .args(["-n", "-o", "SOURCE"])
            .arg(&self.dir)
            .output()
            .unwrap();
        let device = String::from_utf8(source.stdout).unwrap();
        let name = Path::new(device.trim()).file_name().unwrap().to_owned();
        let trigger = Path::new("/sys/fs/ext4")
            .join(name)
            .join("trigger_fs_error");
        std::fs::write(&trigger, "1").unwrap_or_else(|e| panic!("{}: {e}", trigger.display()));
    }
}

impl Drop for Ext4Disk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
        let _ = std::fs::remove_file(&self.image);
    }
}
