//! Records the commit the binaries are built from (`BENCHFS_COMMIT`), with `-dirty` when
//! tracked files differ from it, so a report names the code that made its figures and not
//! whatever the source tree holds when it runs. `unknown` outside a git checkout.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    // Again when the checkout moves (HEAD, a commit, the index) or a source changes.
    for path in [
        ".git/HEAD",
        ".git/index",
        ".git/refs",
        "src",
        "crates",
        "Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={path}");
    }
    let commit = match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(sha) if !sha.is_empty() => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{sha}-dirty")
            } else {
                sha
            }
        }
        _ => "unknown".into(),
    };
    println!("cargo:rustc-env=BENCHFS_COMMIT={commit}");
}
