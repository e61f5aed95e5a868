//! Records the commit the binaries are built from (`BENCHFS_COMMIT`), with `-dirty` when the
//! sources differ from it, so a report names the code that made its figures and not
//! whatever the source tree holds when it runs. `unknown` outside a git checkout.

use std::path::Path;
use std::process::Command;

/// What the binaries are built from; `-dirty` looks at these, and a change to any of them
/// runs this script again.
const SOURCES: [&str; 5] = ["src", "crates", "Cargo.toml", "Cargo.lock", "build.rs"];

fn git(args: &[&str]) -> Option<String> {
    // No optional locks: a status refreshing the index would change it, and so make cargo
    // run this script (and rebuild) again.
    let out = Command::new("git")
        .arg("--no-optional-locks")
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    for path in SOURCES {
        println!("cargo:rerun-if-changed={path}");
    }
    // Where HEAD and the branch it names live (a worktree's or a submodule's too); only
    // paths that exist, since cargo runs a script whose watched path is missing every time.
    let mut refs = vec!["HEAD".to_string(), "packed-refs".to_string()];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        refs.push(branch);
    }
    for name in refs {
        if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
            if Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
    let commit = match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(sha) if !sha.is_empty() => {
            let mut status = vec!["status", "--porcelain", "--untracked-files=no", "--"];
            status.extend(SOURCES);
            if git(&status).is_some_and(|s| !s.is_empty()) {
                format!("{sha}-dirty")
            } else {
                sha
            }
        }
        _ => "unknown".into(),
    };
    println!("cargo:rustc-env=BENCHFS_COMMIT={commit}");
}
