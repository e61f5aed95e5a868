//! A BenchFS FUSE mount of a test cluster: `benchfs mount -f` as a child process,
//! unmounted with `fusermount3 -u` when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{skip, Cluster, ClusterSpec};

/// A cluster and a mount of it.
pub struct Mounted {
    pub cluster: Cluster,
    pub root: PathBuf,
    pub child: Option<Child>,
    pub log: PathBuf,
}

/// Whether this machine can mount FUSE file systems; says so loudly when not.
pub fn fuse_available(test: &str) -> bool {
    let dev = Path::new("/dev/fuse").exists();
    let helper = Command::new("fusermount3").arg("-V").output().is_ok();
    if !(dev && helper) {
        skip(
            test,
            "no /dev/fuse or fusermount3 here (install the fuse3 package; in a container, pass --device /dev/fuse)",
        );
    }
    dev && helper
}

/// Whether a file system of type benchfs is mounted at `root`.
pub fn is_mounted(root: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let root = root.to_string_lossy();
    info.lines().any(|l| {
        l.split(' ').nth(4) == Some(root.as_ref())
            && (l.contains(" - fuse benchfs ") || l.contains(" - fuse.benchfs "))
    })
}

/// Starts `benchfs mount -f` of `cluster` on `root` with `-o options`.
pub fn spawn_mount(cluster: &Cluster, root: &Path, options: &str, log: &Path) -> Child {
    let log_file = std::fs::File::create(log).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_benchfs"));
    cmd.arg("mount")
        .arg(root)
        .arg("--config")
        .arg(&cluster.config_path)
        .arg("--foreground");
    if !options.is_empty() {
        cmd.arg("-o").arg(options);
    }
    cmd.stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .expect("start benchfs mount")
}

impl Mounted {
    /// A cluster per `spec`, mounted with `options`; `None` (and a loud skip) without FUSE.
    pub fn start(test: &str, spec: ClusterSpec, options: &str) -> Option<Mounted> {
        if !fuse_available(test) {
            return None;
        }
        let cluster = Cluster::start(spec);
        let root = cluster.dir.path().join("mnt");
        std::fs::create_dir_all(&root).unwrap();
        let log = cluster.dir.path().join("mount.log");
        let child = spawn_mount(&cluster, &root, options, &log);
        let mut mounted = Mounted {
            cluster,
            root,
            child: Some(child),
            log,
        };
        mounted.wait_mounted();
        Some(mounted)
    }

    /// Waits until the mount is up (panics with the mount's log if it exits first).
    pub fn wait_mounted(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !is_mounted(&self.root) {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("benchfs mount exited ({status}): {}", self.log_text());
                }
            }
            assert!(Instant::now() < deadline, "no mount: {}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The mount's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A path on the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    /// Unmounts with fusermount3 and waits for the mount process; returns its exit code.
    /// A mount kept busy (a stray process with its working directory there) is retried,
    /// then detached lazily, so no test leaves a mount behind.
    pub fn unmount(&mut self) -> Option<i32> {
        let fusermount = |flags: &str| {
            Command::new("fusermount3")
                .arg(flags)
                .arg(&self.root)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while is_mounted(&self.root) && !fusermount("-u") {
            if Instant::now() > deadline {
                fusermount("-uz");
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut child = self.child.take()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.child.is_some() || is_mounted(&self.root) {
            self.unmount();
        }
    }
}
