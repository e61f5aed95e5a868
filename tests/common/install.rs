//! `make install` of the debug build into a prefix under the test directory, for tests
//! that compile C programs and IOR against libbenchfs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository root.
pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `make install PROFILE=dev` into `target/tmp/capi-prefix`, once per test binary (test
/// binaries run one after another, so two never install at once).
pub fn installed_prefix() -> &'static Path {
    static PREFIX: OnceLock<PathBuf> = OnceLock::new();
    PREFIX.get_or_init(|| {
        let prefix = Path::new(env!("CARGO_TARGET_TMPDIR")).join("capi-prefix");
        let out = Command::new("make")
            .current_dir(ROOT)
            .args(["--no-print-directory", "install", "PROFILE=dev"])
            .arg(format!("PREFIX={}", prefix.display()))
            .arg(format!("CARGO={}", env!("CARGO")))
            .output()
            .expect("make runs");
        assert!(
            out.status.success(),
            "make install failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for file in [
            "bin/benchfsd",
            "lib/libbenchfs.so",
            "lib/libbenchfs.a",
            "include/benchfs.h",
            "lib/pkgconfig/benchfs.pc",
        ] {
            assert!(
                prefix.join(file).is_file(),
                "make install did not install {file}"
            );
        }
        prefix
    })
}
