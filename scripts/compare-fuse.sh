#!/usr/bin/env bash
# The FUSE mount beside the native API, and beside chfuse, in one run: 4 servers on this
# machine (memory backend, 4 MiB chunks), the same workloads on each.
#
#   scripts/compare-fuse.sh [PEERS_PREFIX]
#
# Rows (MiB/s; IOPS for 4 KiB random reads):
#   native         `benchfs bench ior` through the Rust API, and the same
#                  workload through std::fs on the mount (its --baseline), one run
#   fio            1 MiB sequential write and read, and 4 KiB random read, with the psync
#                  and io_uring engines, and libaio at iodepth 16 (O_DIRECT)
#   dd             1 MiB blocks, write (conv=fsync) and read
#   ior            IOR -a POSIX on the mount beside IOR -a BENCHFS, 2 ranks, -F -t 1m
# Columns: the mount in each cache mode (direct_io, the default; kernel_cache;
# writeback_cache), the native API, and chfuse on 4 chfsd (if PEERS_PREFIX, where ../shared/peers/build.sh
# installed CHFS, is given). Before every read the page cache is dropped
# (/proc/sys/vm/drop_caches), so reads come from the servers.
# SIZE_MB (default 256) per file. IOR is built into target/compare-fuse/ior from the peers'
# IOR tarball ($IOR_SOURCE).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
peers=${1:-}
size_mb=${SIZE_MB:-256}
servers=4
chunk=4194304
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

for tool in fio jq mpirun fusermount3; do
    command -v $tool >/dev/null || { echo "compare-fuse.sh: $tool not found (scripts/install-deps.sh)" >&2; exit 1; }
done
[ -w /proc/sys/vm/drop_caches ] || { echo "compare-fuse.sh: run as root (reads drop the page cache first)" >&2; exit 1; }

bfs=$root/target/compare-fuse
mkdir -p "$bfs"
make -C "$root" --no-print-directory install PREFIX="$bfs" >"$bfs.install.log" 2>&1 ||
    { tail -20 "$bfs.install.log" >&2; exit 1; }
# IOR linked against this libbenchfs (the wire version must match the servers').
BENCHFS_PREFIX=$bfs "$root/scripts/build-ior.sh" "${IOR_SOURCE:-$root/../shared/peers/ior-4.0.0.tar.gz}" "$bfs/ior" >/dev/null
ior=$bfs/ior/bin/ior
benchfs=$bfs/bin/benchfs

work=$(mktemp -d /tmp/compare-fuse.XXXXXX)
mnt=$work/mnt
mkdir -p "$mnt"
results=$work/results.txt
chfs_dir=/dev/shm/compare-fuse-$$
port=$((50100 + (RANDOM % 200) * 10))
# shellcheck source=scripts/chfs-servers.sh
. "$root/scripts/chfs-servers.sh"
cleanup() {
    fusermount3 -u "$mnt" 2>/dev/null || true
    stop_chfs
    "$benchfs" cluster down --dir "$work/cluster" >/dev/null 2>&1 || true
    rm -rf "$work" "$chfs_dir"
}
trap cleanup EXIT

drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
put() { echo "$1 $2 $3" >>"$results"; }

# fio_row COLUMN NAME ARGS...: one fio job on the mount; its bandwidth in MiB/s, or IOPS
# for random reads.
fio_row() {
    local col=$1 name=$2; shift 2
    local out
    out=$(fio --name=job --directory="$mnt" --filename=fio.dat --size="${size_mb}m" \
        --output-format=json "$@" 2>/dev/null) || { put "$col" "$name" failed; return; }
    case $name in
        *randread*) put "$col" "$name" "$(jq '.jobs[0].read.iops | floor' <<<"$out")" ;;
        *read*) put "$col" "$name" "$(jq '.jobs[0].read.bw_bytes / 1048576 | floor' <<<"$out")" ;;
        *) put "$col" "$name" "$(jq '.jobs[0].write.bw_bytes / 1048576 | floor' <<<"$out")" ;;
    esac
}

# dd_row COLUMN NAME ARGS...: MiB/s of one dd.
dd_row() {
    local col=$1 name=$2; shift 2
    local start end
    start=$(date +%s.%N)
    dd "$@" bs=1M status=none || { put "$col" "$name" failed; return; }
    end=$(date +%s.%N)
    put "$col" "$name" "$(echo "$size_mb / ($end - $start)" | bc -l | xargs printf '%.0f')"
}

# workloads COLUMN: fio, dd and IOR -a POSIX on whatever is mounted at $mnt.
workloads() {
    local col=$1
    for engine in psync io_uring; do
        fio_row "$col" "fio-$engine-write-1m" --rw=write --bs=1m --ioengine=$engine --end_fsync=1
        drop
        fio_row "$col" "fio-$engine-read-1m" --rw=read --bs=1m --ioengine=$engine
        drop
        fio_row "$col" "fio-$engine-randread-4k" --rw=randread --bs=4k --ioengine=$engine --runtime=10 --time_based=0 --io_size=32m
        rm -f "$mnt/fio.dat"
    done
    fio_row "$col" "fio-libaio-qd16-write-1m" --rw=write --bs=1m --ioengine=libaio --iodepth=16 --direct=1 --end_fsync=1
    drop
    fio_row "$col" "fio-libaio-qd16-read-1m" --rw=read --bs=1m --ioengine=libaio --iodepth=16 --direct=1
    fio_row "$col" "fio-libaio-qd16-randread-4k" --rw=randread --bs=4k --ioengine=libaio --iodepth=16 --direct=1 --io_size=32m
    rm -f "$mnt/fio.dat"
    dd_row "$col" dd-write-1m if=/dev/zero of="$mnt/dd.dat" count="$size_mb" conv=fsync
    drop
    dd_row "$col" dd-read-1m if="$mnt/dd.dat" of=/dev/null
    rm -f "$mnt/dd.dat"
    local out=$work/ior.out
    mpirun --oversubscribe -np 2 "$ior" -a POSIX -w -r -C -F -e -t 1m -b "$((size_mb / 2))m" -o "$mnt/ior" >"$out" 2>&1 || true
    awk -v c="$col" '/^(write|read) / && NF == 11 { print c, "ior-" $1 "-1m", int($2) }' "$out" >>"$results"
    rm -rf "$mnt"/ior*
}

"$benchfs" cluster up --wipe --dir "$work/cluster" --servers $servers --backend memory \
    --chunk-size $chunk >/dev/null
for mode in direct_io kernel_cache writeback_cache; do
    echo "benchfs mount -o $mode" >&2
    "$benchfs" mount "$mnt" --dir "$work/cluster" -o "$mode" --log "$work/mount.log" >/dev/null
    workloads "benchfs-$mode"
    if [ $mode = direct_io ]; then
        # The native API and std::fs on the mount, one `benchfs bench` run.
        "$benchfs" bench ior --dir "$work/cluster" -b "${size_mb}m" -t 1m --baseline "$mnt" \
            --baseline-label fuse --no-limits --out "$work/bench-report" >"$work/bench.out" 2>&1
        grep -E '^(phase|ior-)' "$work/bench.out" >"$work/bench.rows" || true
    fi
    fusermount3 -u "$mnt"
done
mpirun --oversubscribe -np 2 "$ior" -a BENCHFS "--benchfs.registry=$work/cluster/registry" \
    -w -r -C -F -e -t 1m -b "$((size_mb / 2))m" -o /ior >"$work/ior-native.out" 2>&1 || true
awk '/^(write|read) / && NF == 11 { print "native-api", "ior-" $1 "-1m", int($2) }' "$work/ior-native.out" >>"$results"
"$benchfs" cluster down --dir "$work/cluster" >/dev/null

if [ -n "$peers" ]; then
    export LD_LIBRARY_PATH=$peers/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} PATH=$peers/bin:$peers/sbin:$PATH
    start_chfs
    export CHFS_CHUNK_SIZE=$chunk CHFS_RDMA_THRESH=32768
    echo "chfuse" >&2
    chfuse -f "$mnt" >"$work/chfuse.log" 2>&1 &
    chfs_pids+=($!)
    for _ in $(seq 100); do grep -q " $mnt " /proc/mounts && break; sleep 0.1; done
    workloads chfuse
    fusermount -u "$mnt" 2>/dev/null || fusermount3 -u "$mnt"
    stop_chfs
fi

cols=(benchfs-direct_io benchfs-kernel_cache benchfs-writeback_cache native-api)
[ -z "$peers" ] || cols+=(chfuse)
echo "# benchfs mount vs native API${peers:+ vs chfuse}: $servers servers (memory, 4 MiB chunks), $(nproc) cores, ${size_mb} MiB per file, commit $(git -C "$root" rev-parse --short HEAD)"
echo "# MiB/s (randread: IOPS)"
printf '| workload |'; printf ' %s |' "${cols[@]}"; echo
printf '|---|'; printf -- '---|%.0s' "${cols[@]}"; echo
for w in $(awk '{print $2}' "$results" | awk '!seen[$0]++'); do
    printf '| %s |' "$w"
    for c in "${cols[@]}"; do
        printf ' %s |' "$(awk -v c="$c" -v w="$w" '$1 == c && $2 == w { print $3 }' "$results" | tail -1)"
    done
    echo
done
echo
echo "# benchfs bench ior: the native API (benchfs) beside std::fs on the mount (fuse; direct_io), one run"
cat "$work/bench.rows" 2>/dev/null || true
