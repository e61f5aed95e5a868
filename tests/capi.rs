//! libbenchfs from C: `make install` into a temporary prefix, compile
//! `tests/c/capi_test.c` with cc against the installed header and library (shared, then
//! static, both through benchfs.pc), and run it against a 4-server cluster. The program
//! calls every function, checks results and errno, and runs 4 threads at once.

mod common;

use std::path::Path;
use std::process::Command;

use common::install::{installed_prefix, ROOT};
use common::{Cluster, ClusterSpec};

/// What `pkg-config` says about benchfs in `prefix`.
fn pkg_config(prefix: &Path, args: &[&str]) -> Vec<String> {
    let out = Command::new("pkg-config")
        .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig"))
        .args(args)
        .arg("benchfs")
        .output()
        .expect("pkg-config runs");
    assert!(
        out.status.success(),
        "pkg-config {args:?} benchfs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Compiles `source` into `out` with `link` arguments.
fn compile(source: &Path, out: &Path, cflags: &[String], link: &[String]) {
    let result = Command::new("cc")
        .args(["-std=c11", "-O1", "-Wall", "-Wextra", "-Werror", "-pthread"])
        .args(cflags)
        .arg(source)
        .args(link)
        .arg("-o")
        .arg(out)
        .output()
        .expect("cc runs");
    assert!(
        result.status.success(),
        "cc {} failed:\n{}",
        source.display(),
        String::from_utf8_lossy(&result.stderr)
    );
}

/// Runs a compiled test program against `cluster` and checks it passed.
/// A command running `program` against `cluster` with the installed library: cargo's
/// `LD_LIBRARY_PATH` (the target directory, where an older `libbenchfs.so` may lie) would
/// take precedence over the program's rpath.
fn c_program(program: &Path, cluster: &Cluster) -> Command {
    let mut command = Command::new(program);
    command
        .env("BENCHFS_REGISTRY", cluster.registry())
        .env_remove("BENCHFS_CONFIG")
        .env_remove("LD_LIBRARY_PATH");
    command
}

fn run_against(program: &Path, cluster: &Cluster) {
    let out = c_program(program, cluster)
        .output()
        .expect("the test program runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    common::note(&format!("{}: {}", program.display(), stdout.trim()));
    assert!(
        out.status.success() && stdout.contains(" 0 failed"),
        "{} failed ({}):\n{stdout}\n{stderr}",
        program.display(),
        out.status
    );
}

#[test]
fn c_program_calls_every_function_shared_and_static() {
    let prefix = installed_prefix();
    let dir = tempfile::tempdir().unwrap();
    let source = Path::new(ROOT).join("tests/c/capi_test.c");
    let cflags = pkg_config(prefix, &["--cflags"]);

    let shared = dir.path().join("capi_test");
    let mut link = pkg_config(prefix, &["--libs"]);
    link.push(format!("-Wl,-rpath,{}", prefix.join("lib").display()));
    compile(&source, &shared, &cflags, &link);

    // The static archive named by path, so the linker cannot pick the shared library.
    let archive = prefix.join("lib/libbenchfs.a").display().to_string();
    let static_link: Vec<String> = pkg_config(prefix, &["--static", "--libs"])
        .into_iter()
        .map(|arg| {
            if arg == "-lbenchfs" {
                archive.clone()
            } else {
                arg
            }
        })
        .collect();
    let fixed = dir.path().join("capi_test_static");
    compile(&source, &fixed, &cflags, &static_link);
    let needed = Command::new("readelf")
        .arg("-d")
        .arg(&fixed)
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&needed.stdout).contains("libbenchfs"),
        "the static build must not need libbenchfs.so"
    );

    let cluster = Cluster::start(ClusterSpec::default());
    run_against(&shared, &cluster);
    run_against(&fixed, &cluster);
}

/// Compiles `tests/c/<name>.c` into `dir` against the installed library (shared, found
/// by its rpath); returns the program's path.
fn build_program(name: &str, dir: &Path) -> std::path::PathBuf {
    let prefix = installed_prefix();
    let source = Path::new(ROOT).join(format!("tests/c/{name}.c"));
    let program = dir.join(name);
    let mut link = pkg_config(prefix, &["--libs"]);
    link.push(format!("-Wl,-rpath,{}", prefix.join("lib").display()));
    compile(&source, &program, &pkg_config(prefix, &["--cflags"]), &link);
    program
}

#[test]
fn threads_and_programs_exit_cleanly_after_a_call_timed_out() {
    // Found by a hostile-user run: a thread that returned after a call timed out, or a
    // program that exited then, aborted the whole process (SIGABRT, exit 134).
    let dir = tempfile::tempdir().unwrap();
    let program = build_program("thread_exit", dir.path());
    let cluster = Cluster::start(ClusterSpec {
        servers: 2,
        ..ClusterSpec::default()
    });
    for i in 0..cluster.spec.servers {
        cluster.signal(i, "STOP");
    }
    let out = c_program(&program, &cluster)
        .env("BENCHFS_RPC_TIMEOUT_MSEC", "500")
        .output()
        .expect("the test program runs");
    for i in 0..cluster.spec.servers {
        cluster.signal(i, "CONT");
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("joined"),
        "{} ({}):\n{stdout}\n{}",
        program.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_forked_child_is_refused_and_neither_process_aborts() {
    // Found by a hostile-user run: a child of fork() that exited normally aborted on a
    // UCX assertion while closing its inherited client, and the parent then aborted at
    // its own exit (the two shared epoll sets); a child's calls hung.
    let dir = tempfile::tempdir().unwrap();
    let program = build_program("fork", dir.path());
    let cluster = Cluster::start(ClusterSpec::default());
    let out = c_program(&program, &cluster)
        .output()
        .expect("the test program runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && stdout.contains("child refused: 1")
            && stdout.contains("parent fine"),
        "{} ({}):\n{stdout}\n{}",
        program.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The header declares exactly the functions the library exports.
#[test]
fn header_declares_every_exported_function() {
    let prefix = installed_prefix();
    let header = std::fs::read_to_string(prefix.join("include/benchfs.h")).unwrap();
    let mut declared: Vec<String> = header
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("benchfs_") && !w.ends_with("_t"))
        .map(str::to_string)
        .collect();
    declared.sort();
    declared.dedup();
    let nm = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(prefix.join("lib/libbenchfs.so"))
        .output()
        .expect("nm runs");
    assert!(nm.status.success());
    let mut exported: Vec<String> = String::from_utf8_lossy(&nm.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .filter(|s| s.starts_with("benchfs_"))
        .map(str::to_string)
        .collect();
    exported.sort();
    assert_eq!(
        declared, exported,
        "include/benchfs.h and libbenchfs.so disagree"
    );
}
