fn main() { pkg_config::Config::new().atleast_version("1.12").probe("ucx").expect("libucx >= 1.12 (Debian: apt-get install libucx-dev)"); }
