#!/usr/bin/env bash
# Builds IOR and mdtest with the BenchFS backend (-a BENCHFS).
#   scripts/build-ior.sh SRC [OUT]
# SRC: an IOR 4.0.0 source tree or tarball (it is copied, never changed). OUT: where IOR
# is installed (default: target/ior). libbenchfs must be installed first
# (`make install PREFIX=...`); BENCHFS_PREFIX names that prefix (default /usr/local).
# Needs mpicc, autoconf, automake and libtool (scripts/install-deps.sh installs them).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
src=${1:?usage: build-ior.sh SRC [OUT]}
out=${2:-$root/target/ior}
benchfs_prefix=${BENCHFS_PREFIX:-/usr/local}
jobs=${JOBS:-2}

[ -e "$src" ] || { echo "build-ior.sh: $src does not exist" >&2; exit 1; }
[ -f "$benchfs_prefix/lib/pkgconfig/benchfs.pc" ] || {
    echo "build-ior.sh: no libbenchfs in $benchfs_prefix: run 'make install PREFIX=$benchfs_prefix' or set BENCHFS_PREFIX" >&2
    exit 1
}
command -v mpicc >/dev/null || { echo "build-ior.sh: mpicc not found (Debian: openmpi-bin libopenmpi-dev)" >&2; exit 1; }

mkdir -p "$out" && out=$(cd "$out" && pwd)
work="$out/src"
rm -rf "$work" && mkdir -p "$work"
if [ -d "$src" ]; then
    cp -a "$src/." "$work/"
else
    tar xzf "$src" -C "$work" --strip-components=1
fi
cd "$work"
cp "$root/contrib/ior/aiori-BENCHFS.c" src/
patch -p1 --forward --quiet < "$root/contrib/ior/ior-4.0.0-benchfs.patch"
log="$out/build.log"
{
    ./bootstrap
    PKG_CONFIG_PATH="$benchfs_prefix/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}" \
        ./configure --prefix="$out" CC=mpicc MPICC=mpicc
    make -j"$jobs"
    make install
} >"$log" 2>&1 || { tail -30 "$log" >&2; echo "build-ior.sh: build failed; full log: $log" >&2; exit 1; }
# ior -h exits non-zero, so its output is captured before it is searched.
help=$("$out/bin/ior" -h 2>&1 || true)
grep -q BENCHFS <<<"$help" || {
    echo "build-ior.sh: ior was built without the BENCHFS backend; see $log" >&2
    exit 1
}
echo "ior:    $out/bin/ior"
echo "mdtest: $out/bin/mdtest"
