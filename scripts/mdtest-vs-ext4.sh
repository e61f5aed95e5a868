#!/usr/bin/env bash
# mdtest-easy creates on BenchFS beside local ext4, alternated in one run.
#
#   scripts/mdtest-vs-ext4.sh [DISK_DIR]
#
# Each round runs `mdtest -n FILES -F -C -u` with NP ranks three ways, back to back:
#   benchfs   -a BENCHFS against SERVERS memory servers on this machine
#   ext4-ram  -a POSIX on an ext4 file system made in a RAM-backed loop device: ext4's own
#             cost with no disk under it, so it stands for ext4 on a fast NVMe and does not
#             swing with a shared host's disk (on our VM, ext4 on the boot disk gave 4k to
#             120k creates/s within one evening)
#   ext4-disk -a POSIX in DISK_DIR, if given (an ext4 directory on a real disk)
# and prints each figure, then the median of each and of the ratios within a round.
# Goal (issue: small files and metadata): benchfs >= 2 x ext4 with 2 ranks.
#
#   NP (2) ranks, FILES (100000) per rank, ROUNDS (3), SERVERS (1), RAM_FS_MB (4096).
# Needs root (mount) and mpirun; IOR is built into target/mdtest-vs-ext4/ior from the
# peers' IOR tarball ($IOR_SOURCE).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
disk_dir=${1:-}
np=${NP:-2}
files=${FILES:-100000}
rounds=${ROUNDS:-3}
servers=${SERVERS:-1}
ram_fs_mb=${RAM_FS_MB:-4096}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

for tool in mpirun mkfs.ext4 losetup; do
    command -v $tool >/dev/null || { echo "mdtest-vs-ext4.sh: $tool not found (scripts/install-deps.sh)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "mdtest-vs-ext4.sh: run as root (it mounts an ext4 loop device)" >&2; exit 1; }
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || { echo "ROUNDS must be a positive integer" >&2; exit 1; }
if [ -n "$disk_dir" ]; then
    [ -d "$disk_dir" ] || { echo "mdtest-vs-ext4.sh: $disk_dir is not a directory" >&2; exit 1; }
    disk_dir=$(cd "$disk_dir" && pwd)
fi

work=$root/target/mdtest-vs-ext4
mkdir -p "$work"
make -C "$root" --no-print-directory install PREFIX="$work" >"$work.install.log" 2>&1 ||
    { tail -20 "$work.install.log" >&2; exit 1; }
BENCHFS_PREFIX=$work "$root/scripts/build-ior.sh" "${IOR_SOURCE:-$root/../shared/peers/ior-4.0.0.tar.gz}" "$work/ior" >/dev/null
mdtest=$work/ior/bin/mdtest
benchfs=$work/bin/benchfs

# The image lives in a tmpfs of its own: some hosts hand out a read-only loop device for
# a file in /dev/shm.
ram=$work/ram
image=$ram/ext4.img
mnt=$work/ext4-ram
cluster=$work/cluster
cleanup() {
    "$benchfs" cluster down --dir "$cluster" >/dev/null 2>&1 || true
    umount "$mnt" 2>/dev/null || true
    umount "$ram" 2>/dev/null || true
}
trap cleanup EXIT
mkdir -p "$ram" "$mnt"
mount -t tmpfs -o size="$((ram_fs_mb + 64))M" tmpfs "$ram"
truncate -s "${ram_fs_mb}M" "$image"
mkfs.ext4 -q -F "$image"
mount -o loop,rw "$image" "$mnt"
touch "$mnt/.rw" 2>/dev/null || { echo "mdtest-vs-ext4.sh: the ext4 loop mount is not writable" >&2; exit 1; }
rm "$mnt/.rw"

# creates LABEL ARGS...: one mdtest run's "File creation" max (ops/s), or nothing.
creates() {
    local label=$1 out=$work/mdtest-$1.out; shift
    mpirun -np "$np" -x LD_LIBRARY_PATH "$mdtest" "$@" -n "$files" -F -C -u >"$out" 2>&1 || true
    awk '/File creation/ { print int($3) }' "$out"
}
# posix_creates LABEL DIR: mdtest -a POSIX in a fresh DIR/mdtest, removed after.
posix_creates() {
    local dir=$2/benchfs-mdtest-$$
    rm -rf "$dir"
    sync
    mkdir -p "$dir"
    creates "$1" -a POSIX -d "$dir"
    rm -rf "$dir"
}

export LD_LIBRARY_PATH=$work/lib
echo "# host=$(hostname) cpus=$(nproc) kernel=$(uname -r) commit=$(git -C "$root" rev-parse --short=12 HEAD 2>/dev/null || echo none)"
echo "# np=$np files_per_rank=$files rounds=$rounds servers=$servers ext4_ram=${ram_fs_mb}MiB disk_dir=${disk_dir:-none}"
declare -A fig
for r in $(seq 1 "$rounds"); do
    "$benchfs" cluster up --wipe --dir "$cluster" --servers "$servers" --backend memory >/dev/null
    fig[benchfs,$r]=$(creates benchfs-$r -a BENCHFS --benchfs.registry="$cluster/registry" -d /mdtest)
    "$benchfs" cluster down --dir "$cluster" >/dev/null
    fig[ram,$r]=$(posix_creates ext4-ram-$r "$mnt")
    [ -z "$disk_dir" ] || fig[disk,$r]=$(posix_creates ext4-disk-$r "$disk_dir")
    echo "round=$r benchfs=${fig[benchfs,$r]:-failed} ext4_ram=${fig[ram,$r]:-failed} ext4_disk=${fig[disk,$r]:--}"
done

# median FORMAT VALUES...: the median of the numeric VALUES, printed with FORMAT.
median() { local format=$1; shift
    printf '%s\n' "$@" | { grep -E '^[0-9.]+$' || true; } | sort -g | awk -v f="$format" '{ v[++n] = $1 } END {
    if (n == 0) { print "n/a"; exit }
    printf f "\n", (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && b > 0) printf "%.2f", a / b }'; }
echo
echo "# creates/s, median over $rounds rounds; ratio = benchfs / ext4 within a round, median"
for base in ram disk; do
    [ "$base" = ram ] || [ -n "$disk_dir" ] || continue
    vals=() refs=() ratios=()
    for r in $(seq 1 "$rounds"); do
        vals+=("${fig[benchfs,$r]:-}"); refs+=("${fig[$base,$r]:-}")
        ratios+=("$(ratio "${fig[benchfs,$r]:-}" "${fig[$base,$r]:-}")")
    done
    printf 'benchfs %-10s ext4-%-5s %-10s ratio %s (goal >= 2.00)\n' "$(median %.0f "${vals[@]}")" "$base" "$(median %.0f "${refs[@]}")" "$(median %.2f "${ratios[@]}")"
done
