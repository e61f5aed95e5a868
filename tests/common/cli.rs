//! Helpers of the command-line tests: running the `benchfs` binary, a cluster directory
//! whose servers (started by `benchfs cluster up`) are stopped when it is dropped, and a
//! snapshot of a directory tree to show that a command left it alone.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::test_root;

/// `benchfs bench` options for the IO500 shapes at sizes a test runs in seconds.
pub const TINY_IO500: [&str; 8] = [
    "--easy-block",
    "4m",
    "--hard-segments",
    "20",
    "--easy-files",
    "20",
    "--hard-files",
    "20",
];

/// What one run of `benchfs` printed, and whether it succeeded.
#[derive(Debug)]
pub struct Run {
    /// The command line, for messages.
    pub args: Vec<String>,
    /// Whether it exited 0.
    pub success: bool,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl Run {
    /// The standard output of a run that must have succeeded.
    #[track_caller]
    pub fn ok(self) -> String {
        assert!(
            self.success,
            "benchfs {:?} failed: {}",
            self.args, self.stderr
        );
        self.stdout
    }

    /// The standard error of a run that must have failed.
    #[track_caller]
    pub fn failed(self) -> String {
        assert!(
            !self.success,
            "benchfs {:?} succeeded but must fail; stdout: {}",
            self.args, self.stdout
        );
        self.stderr
    }
}

/// Runs `benchfs args`, with `envs` set. BENCHFS_SECRET_FILE is unset unless `envs` sets
/// it, so the caller's environment cannot change what a test sees.
pub fn benchfs(args: &[&str], envs: &[(&str, &Path)]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_benchfs"));
    command
        .args(args)
        .envs(envs.iter().map(|(k, v)| (k, v.as_os_str())));
    run_benchfs(&mut command, args)
}

/// Runs `command`, the `benchfs` command line `args` however it is started (in another
/// working directory, through a shell that sets limits). BENCHFS_SECRET_FILE is unset
/// unless the command sets it, as [`benchfs`] has it.
pub fn run_benchfs(command: &mut Command, args: &[&str]) -> Run {
    if !command
        .get_envs()
        .any(|(key, _)| key == "BENCHFS_SECRET_FILE")
    {
        command.env_remove("BENCHFS_SECRET_FILE");
    }
    let out = command.output().expect("run benchfs");
    Run {
        args: args.iter().map(|a| a.to_string()).collect(),
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A directory for a cluster that `benchfs cluster up` starts, inside a temporary
/// directory. Dropping it runs `benchfs cluster down` when servers were started, so a
/// failing test leaves no server behind.
pub struct ClusterDir {
    /// The temporary directory around the cluster's.
    pub root: tempfile::TempDir,
    /// The cluster directory (`--dir`), not created yet.
    pub dir: PathBuf,
}

impl ClusterDir {
    /// A cluster directory named `name` in a fresh temporary directory.
    pub fn new(name: &str) -> ClusterDir {
        let root = tempfile::Builder::new()
            .prefix("benchfs-cli")
            .tempdir_in(test_root())
            .unwrap();
        let dir = root.path().join(name);
        ClusterDir { root, dir }
    }

    /// The cluster directory as a string, for command lines.
    pub fn dir_arg(&self) -> &str {
        self.dir.to_str().expect("test paths are UTF-8")
    }

    /// Runs `benchfs args --dir <dir>`.
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_with_env(args, &[])
    }

    /// Runs `benchfs args --dir <dir>` with `envs` set.
    pub fn run_with_env(&self, args: &[&str], envs: &[(&str, &Path)]) -> Run {
        let mut all = args.to_vec();
        all.extend(["--dir", self.dir_arg()]);
        benchfs(&all, envs)
    }

    /// Starts `benchfs args --dir <dir>` in the background, its output piped.
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        Command::new(env!("CARGO_BIN_EXE_benchfs"))
            .args(args)
            .args(["--dir", self.dir_arg()])
            .env_remove("BENCHFS_SECRET_FILE")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start benchfs")
    }

    /// Runs `benchfs args --dir <dir>`, which must succeed; returns its standard output.
    #[track_caller]
    pub fn cli(&self, args: &[&str]) -> String {
        self.run(args).ok()
    }

    /// The pids of the servers `cluster up` started, from the cluster's `pids` file.
    pub fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.dir.join("pids"))
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect()
    }

    /// A path in the temporary directory beside the cluster's.
    pub fn local(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }
}

impl Drop for ClusterDir {
    fn drop(&mut self) {
        if self.dir.join("pids").exists() {
            let _ = self.run(&["cluster", "down"]);
        }
    }
}

/// Every file under `dir` with its contents, by path relative to `dir`, sorted.
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap().to_path_buf();
                files.push((rel, std::fs::read(&path).unwrap()));
            }
        }
    }
    files.sort();
    files
}
