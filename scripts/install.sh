#!/usr/bin/env bash
# Installs what `make install` built: benchfsd and benchfs into PREFIX/bin, libbenchfs
# (shared and static) into PREFIX/lib, benchfs.h into PREFIX/include and benchfs.pc
# into PREFIX/lib/pkgconfig.
#   scripts/install.sh PREFIX BUILD_DIR     (BUILD_DIR: target/release or target/debug)
set -euo pipefail
prefix=${1:?usage: install.sh PREFIX BUILD_DIR}
build=${2:?usage: install.sh PREFIX BUILD_DIR}
root=$(cd "$(dirname "$0")/.." && pwd)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)

mkdir -p "$prefix" && prefix=$(cd "$prefix" && pwd)
install -d "$prefix/bin" "$prefix/lib/pkgconfig" "$prefix/include"
install -m 755 "$build/benchfsd" "$build/benchfs" "$prefix/bin/"
install -m 755 "$build/libbenchfs.so" "$prefix/lib/"
install -m 644 "$build/libbenchfs.a" "$prefix/lib/"
install -m 644 "$root/include/benchfs.h" "$prefix/include/"
# Libs.private: what the Rust standard library in libbenchfs.a needs from the C
# library (`rustc --print native-static-libs`); UCX comes through Requires.private.
cat > "$prefix/lib/pkgconfig/benchfs.pc" <<PC
prefix=$prefix
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: benchfs
Description: BenchFS client library: an ad hoc distributed file system for HPC jobs
Version: $version
Requires.private: ucx
Libs: -L\${libdir} -lbenchfs
Libs.private: -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc
Cflags: -I\${includedir}
PC
echo "installed BenchFS $version into $prefix"
