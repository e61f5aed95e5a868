//! Links the system UCX (ucp, uct, ucs) found by pkg-config. No bindgen at build time: the
//! bindings are checked in (see `scripts/gen-ucx-bindings.sh`).

fn main() {
    if let Err(error) = pkg_config::Config::new()
        .atleast_version("1.12")
        .probe("ucx")
    {
        panic!(
            "libucx >= 1.12 not found by pkg-config (Debian: apt-get install libucx-dev): {error}"
        );
    }
}
