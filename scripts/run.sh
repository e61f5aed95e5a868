#!/usr/bin/env bash
# The main job: starts a local cluster, runs the standard BenchFS benchmark on it beside
# the local disk, prints the report and saves it under bench-results/.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=target/release
out=bench-results
mkdir -p "$out"
report="$out/report-$(date -u +%Y%m%dT%H%M%SZ).txt"

{
    echo "# BenchFS report"
    echo "date:    $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit:  $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "host:    $(uname -srm), $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
    echo "ucx:     $(pkg-config --modversion ucx)"
    echo
    echo "## Standard benchmark: 4 servers on loopback vs the local disk"
    "$bin/benchfs" bench --servers 4 --backend memory --size-mb 512
    echo
    echo "## Placement ring"
    "$bin/benchfs" placement-stats --servers 1024 --keys 1000000
} 2>&1 | tee "$report"
echo "report saved to $report"
