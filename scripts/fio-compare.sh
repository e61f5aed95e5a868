#!/usr/bin/env bash
# Runs the BenchFS IoUringChunkStore bench (O_DIRECT) and fio (ioengine=io_uring,
# direct=1) side by side on the same directory, with the same block sizes, queue depth,
# file-set size and time per workload, and prints one table with the ratios.
#
# Usage: scripts/fio-compare.sh [DIR]
#   DIR       a directory on the disk to measure (not tmpfs); default /work/fio-compare
#   SIZE_MIB  file-set size (default 256); QD queue depth (default 32);
#   SECS      seconds per workload (default 3)
# fio's file set mirrors the store's layout: SIZE_MIB/4 files of 4 MiB (one per chunk).
set -euo pipefail

DIR=${1:-/work/fio-compare}
SIZE_MIB=${SIZE_MIB:-256}
QD=${QD:-32}
SECS=${SECS:-3}
CHUNK_MIB=4
ROOT=$(cd "$(dirname "$0")/.." && pwd)

command -v fio >/dev/null || { echo "fio not found" >&2; exit 1; }
command -v jq >/dev/null || { echo "jq not found" >&2; exit 1; }
mkdir -p "$DIR"
if [ "$(stat -f -c %T "$DIR")" = tmpfs ]; then
    echo "$DIR is on tmpfs, which has no O_DIRECT; pass a directory on a real disk" >&2
    exit 1
fi
if (( SIZE_MIB < CHUNK_MIB || SIZE_MIB % CHUNK_MIB != 0 )); then
    echo "SIZE_MIB must be a multiple of $CHUNK_MIB" >&2
    exit 1
fi

echo "# host=$(hostname) cpus=$(nproc) kernel=$(uname -r) fs=$(stat -f -c %T "$DIR")" \
     "dev=$(df --output=source "$DIR" | tail -1) commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo none)"
echo "# size_mib=$SIZE_MIB qd=$QD secs=$SECS dir=$DIR $(fio --version)"

(cd "$ROOT" && cargo build -q --release -p benchfs-store --bench store_bench)
BENCH=$(ls -t "$ROOT"/target/release/deps/store_bench-* | grep -v '\.d$' | head -1)

# BenchFS: the io_uring store with O_DIRECT.
"$BENCH" --dir "$DIR/benchfs" --size-mib "$SIZE_MIB" --qd "$QD" --secs "$SECS" \
    --backends iouring --direct on | tee "$DIR/benchfs.out" | grep -v '^store_bench' || true
grep -q '^store_bench' "$DIR/benchfs.out" || { echo "the bench printed no results" >&2; exit 1; }

# fio: the same workloads in the same order, each on its freshly laid-out file set.
rm -rf "$DIR/fio"
mkdir -p "$DIR/fio"
declare -A FIO
for spec in seqwrite4m:write:4m seqread4m:read:4m seqwrite1m:write:1m seqread1m:read:1m \
            randwrite4k:randwrite:4k randread4k:randread:4k; do
    IFS=: read -r name rw bs <<<"$spec"
    fio --name="$name" --directory="$DIR/fio" --filename_format='chunk.$filenum' \
        --nrfiles=$((SIZE_MIB / CHUNK_MIB)) --filesize=${CHUNK_MIB}m --size=${SIZE_MIB}m \
        --file_service_type=random --rw="$rw" --bs="$bs" --ioengine=io_uring --iodepth="$QD" \
        --direct=1 --time_based --runtime="$SECS" --numjobs=1 --group_reporting \
        --randrepeat=0 --output-format=json >"$DIR/fio-$name.json"
    case $rw in *write) dir=write ;; *) dir=read ;; esac
    FIO[$name]=$(jq -r ".jobs[0].$dir | \"\(.iops) \(.bw_bytes)\"" "$DIR/fio-$name.json")
done

printf '%-12s %8s %14s %14s %8s\n' workload unit benchfs fio ratio
for name in seqwrite4m seqread4m seqwrite1m seqread1m randwrite4k randread4k; do
    line=$(grep " workload=$name " "$DIR/benchfs.out")
    iops=$(sed -E 's/.* iops=([0-9.]+).*/\1/' <<<"$line")
    mbps=$(sed -E 's/.* mbps=([0-9.]+).*/\1/' <<<"$line")
    read -r fio_iops fio_bw <<<"${FIO[$name]}"
    case $name in
        rand*) unit=IOPS; ours=$iops; theirs=$fio_iops ;;
        *) unit=MB/s; ours=$mbps; theirs=$(awk -v b="$fio_bw" 'BEGIN { printf "%.1f", b / 1e6 }') ;;
    esac
    ratio=$(awk -v a="$ours" -v b="$theirs" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')
    printf '%-12s %8s %14.1f %14.1f %8s\n' "$name" "$unit" "$ours" "$theirs" "$ratio"
done
rm -rf "$DIR/fio" "$DIR/benchfs"
