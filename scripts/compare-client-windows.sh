#!/usr/bin/env bash
# One client's 1 MiB sequential write and read with the client's write-behind and
# read-ahead windows on and off, beside the RPC layer's bandwidth, in one run:
# `benchfs rpc-bench --window W` (W calls of 1 MiB in flight, sent from one buffer, and
# from buffers as large as the file in turn, since a file's bytes come from memory and
# not from the CPU's cache) and `benchfs bench ior` (one client, -t 1m, a file per process) with client.write_behind_bytes =
# client.read_ahead_bytes = W MiB and with both 0, rounds interleaved, over shared memory
# and over TCP. Prints every round and the median of each.
#
#   scripts/compare-client-windows.sh [ROUNDS]
#
# The servers: one memory server in a cluster of its own, warmed by one write and read
# first (a fresh memory store pays for faulting in its pages, which is the store's cost,
# not the client's). WINDOWS (default "16") lists the W to measure; BLOCK (default 1g)
# the bytes per run. Uses the release build in target/release (cargo build --release
# --bins first).
set -euo pipefail

rounds=${1:-5}
windows=${WINDOWS:-16}
block=${BLOCK:-1g}
block_bytes=$(numfmt --from=iec "${block^^}")
root=$(cd "$(dirname "$0")/.." && pwd)
benchfs=$root/target/release/benchfs
[ -x "$benchfs" ] || { echo "build first: cargo build --release --bins" >&2; exit 1; }
work=$(mktemp -d /tmp/benchfs-windows.XXXXXX)
dir=$work/cluster
results=$work/results
trap '"$benchfs" cluster down --dir "$dir" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

"$benchfs" cluster up --dir "$dir" --servers 1 --backend memory >/dev/null
ior() {
    "$benchfs" bench ior --dir "$dir" --clients 1 -t 1m -b "$block" --no-limits \
        --out "$(mktemp -d "$work/report.XXXXXX")" 2>&1 | awk '/^ior-/ {printf "%s=%s ", $1, $3}'
}
BENCHFS_CLIENT_WRITE_BEHIND_BYTES=0 BENCHFS_CLIENT_READ_AHEAD_BYTES=0 ior >/dev/null

median() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
for shm in true false; do
    export BENCHFS_NETWORK_SHARED_MEMORY=$shm
    for w in $windows; do
        for set in 0 "$block_bytes"; do
            bw=$("$benchfs" rpc-bench --busy-poll-us 200 --sizes 1048576 --window "$w" \
                --seconds 2 --payload-set-bytes "$set" |
                awk '/^bw / {for (i = 1; i <= NF; i++) if ($i ~ /^mib_per_s=/) {sub("mib_per_s=", "", $i); print $i}}')
            echo "shared_memory=$shm rpc-bench window=$w payload_set_bytes=$set MiB/s=$bw"
        done
    done
    for round in $(seq 1 "$rounds"); do
        for w in 0 $windows; do
            bytes=$((w * 1048576))
            line=$(BENCHFS_CLIENT_WRITE_BEHIND_BYTES=$bytes BENCHFS_CLIENT_READ_AHEAD_BYTES=$bytes ior)
            echo "shared_memory=$shm round=$round window_mib=$w $line"
            echo "$shm $w $line" >>"$results"
        done
    done
done
unset BENCHFS_NETWORK_SHARED_MEMORY
echo "medians (MiB/s):"
for shm in true false; do
    for w in 0 $windows; do
        for phase in ior-write ior-read; do
            m=$(awk -v s="$shm" -v w="$w" -v p="$phase" '$1 == s && $2 == w {
                for (i = 3; i <= NF; i++) if (index($i, p "=") == 1) print substr($i, length(p) + 2)
            }' "$results" | median)
            echo "shared_memory=$shm window_mib=$w $phase=$m"
        done
    done
done
