#!/usr/bin/env bash
# The main job: starts a 4-server cluster on loopback (io_uring backend under a temporary
# directory), runs the standard suite on it and the same suite on the local disk as the
# baseline, prints the comparison with each result's share of the limits measured in the
# same run, and writes the report directory (JSON, CSV, plots, index.html) under
# bench-results/. The cluster is stopped and removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=target/release
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out="bench-results/$stamp-suite"
# The baseline runs on a real disk (not tmpfs), in a new subdirectory the run removes.
baseline=${BENCHFS_BASELINE_DIR:-/var/tmp/benchfs-baseline}
mkdir -p bench-results "$baseline"

{
    echo "# BenchFS main job, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host: $(uname -srm), $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), UCX $(pkg-config --modversion ucx)"
    echo
    "$bin/benchfs" bench suite --servers 4 --backend iouring --clients 2 \
        --baseline "$baseline" --out "$out"
} 2>&1 | tee "bench-results/$stamp-suite.txt"
cp "bench-results/$stamp-suite.txt" "$out/stdout.txt"
echo "open $out/index.html for the plots"
