#!/usr/bin/env bash
# IOR and mdtest on CHFS and on BenchFS, side by side in one run: 4 servers each on this
# machine, the same client count, chunk size and RDMA threshold, the same IOR binary
# (built with both backends), interleaved rounds (CHFS then BenchFS, each round on fresh
# servers). Prints a table of the median of the rounds with the ratio BenchFS / CHFS.
#
#   scripts/compare-chfs.sh PEERS_PREFIX [ROUNDS]
#
# PEERS_PREFIX: where ../shared/peers/build.sh installed CHFS (sbin/chfsd, bin/chlist,
# lib/pkgconfig/chfs.pc); the IOR source is taken from $IOR_SOURCE (default: the peers'
# tarball). BenchFS is installed (release build) into target/compare.
#
# How CHFS is run, and why it is fair:
#   chfsd -f -H 0 -T 1 -p tcp   foreground, no heartbeat loop (an idle server would
#                                spin), one handler thread per server (BenchFS servers
#                                are single-threaded too), libfabric tcp (ucx+tcp does not
#                                work with this UCX/Mercury pair)
#   -c /dev/shm/...              its store on tmpfs, against BenchFS's memory backend
#   CHFS_CHUNK_SIZE, CHFS_RDMA_THRESH  the same chunk size and threshold as BenchFS
# Margo busy-polls 10 ms after each event and chfsd cannot change it; BenchFS's busy-poll
# window is its default. 4 servers and 2 clients share this machine's cores.
# Sizes: IOR_EASY_BLOCK (256m), IOR_HARD_SEGMENTS (2000), MDTEST_FILES (2000) per rank.
# mdtest runs twice: empty files (create, stat, remove) and mdtest-hard's files of 3901
# bytes written at create and read back (-w 3901 -e 3901: create + write + close per file).
# Each round also measures the shared-memory Active Message bandwidth between two
# processes (ucx_perftest ucp_am_bw, 1 MiB, error handling on, BenchFS's UCX settings), the
# limit the IOR easy phases are held against (PERFTEST, default /usr/bin/ucx_perftest).
# BUSY_POLL_US sets BenchFS's polling window, servers and clients (default: its default);
# 0 suits a machine with fewer cores than servers plus clients.
# PREFAULT_BYTES: chunk memory each BenchFS server faults in at start
# (storage.prefault_bytes; default 0, as CHFS's tmpfs store faults its pages in as it
# grows too). HUGE_PAGES=true: BenchFS chunk memory asks for huge pages
# (storage.huge_pages: true, false or auto, the default).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
peers=${1:?usage: compare-chfs.sh PEERS_PREFIX [ROUNDS]}
rounds=${2:-3}
ior_source=${IOR_SOURCE:-$root/../shared/peers/ior-4.0.0.tar.gz}
easy_block=${IOR_EASY_BLOCK:-256m}
hard_segments=${IOR_HARD_SEGMENTS:-2000}
md_files=${MDTEST_FILES:-2000}
chunk_sizes=(4194304 65536)
rdma_thresh=32768
ranks=2
servers=4

missing=()
for f in sbin/chfsd bin/chlist lib/pkgconfig/chfs.pc; do
    [ -e "$peers/$f" ] || missing+=("$peers/$f")
done
[ -e "$ior_source" ] || missing+=("$ior_source (IOR source; set IOR_SOURCE)")
command -v mpirun >/dev/null || missing+=("mpirun (scripts/install-deps.sh)")
if [ ${#missing[@]} -gt 0 ]; then
    echo "compare-chfs.sh: missing: ${missing[*]}" >&2
    echo "build CHFS and its stack with ../shared/peers/build.sh (PREFIX=$peers)" >&2
    exit 1
fi

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
[ -z "${BUSY_POLL_US:-}" ] || export BENCHFS_NETWORK_BUSY_POLL_US=$BUSY_POLL_US
export LD_LIBRARY_PATH=$peers/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PATH=$peers/bin:$peers/sbin:$PATH
bfs=$root/target/compare
make -C "$root" --no-print-directory install PREFIX="$bfs" >"$bfs.install.log" 2>&1 ||
    { tail -20 "$bfs.install.log" >&2; exit 1; }
# One IOR with both backends: -a CHFS and -a BENCHFS run the same benchmark code.
PKG_CONFIG_PATH=$peers/lib/pkgconfig BENCHFS_PREFIX=$bfs \
    "$root/scripts/build-ior.sh" "$ior_source" "$bfs/ior" >/dev/null
ior=$bfs/ior/bin/ior
mdtest=$bfs/ior/bin/mdtest
grep -q CHFS <<<"$("$ior" -h 2>&1 || true)" || { echo "compare-chfs.sh: IOR was built without CHFS" >&2; exit 1; }

work=$(mktemp -d /tmp/compare-chfs.XXXXXX)
results=$work/results.txt
chfs_dir=/dev/shm/compare-chfs-$$
port=$((50100 + (RANDOM % 200) * 10))
# shellcheck source=scripts/chfs-servers.sh
. "$root/scripts/chfs-servers.sh"
cleanup() {
    stop_chfs
    "$bfs/bin/benchfs" cluster down --dir "$work/benchfs" >/dev/null 2>&1 || true
    rm -rf "$work" "$chfs_dir"
}
trap cleanup EXIT

# ran OUT CMD...: runs CMD with its output in OUT; on failure shows OUT's end and stops
# (the work directory, OUT with it, goes at exit).
ran() {
    local out=$1 status=0
    shift
    "$@" >"$out" 2>&1 || status=$?
    if [ "$status" -ne 0 ]; then
        echo "compare-chfs.sh: exit status $status from: $*" >&2
        tail -20 "$out" >&2
        exit 1
    fi
}

run() {
    local fs=$1 chunk=$2 api=() env=()
    if [ "$fs" = chfs ]; then
        start_chfs
        api=(-a CHFS)
        env=(-x CHFS_SERVER -x CHFS_CHUNK_SIZE=$chunk -x CHFS_RDMA_THRESH=$rdma_thresh)
    else
        # The servers' setting only: a client with it refuses its default backend.
        BENCHFS_STORAGE_HUGE_PAGES=${HUGE_PAGES:-auto} \
            "$bfs/bin/benchfs" cluster up --wipe --dir "$work/benchfs" --servers $servers \
            --backend memory --chunk-size "$chunk" --rdma-threshold $rdma_thresh \
            ${BUSY_POLL_US:+--busy-poll-us "$BUSY_POLL_US"} \
            ${PREFAULT_BYTES:+--prefault-bytes "$PREFAULT_BYTES"} >/dev/null
        api=(-a BENCHFS "--benchfs.registry=$work/benchfs/registry" "--benchfs.chunk_size=$chunk")
    fi
    local mpi=(mpirun --oversubscribe -np $ranks "${env[@]}")
    local out=$work/$fs-$chunk.out
    ran "$out" "${mpi[@]}" "$ior" "${api[@]}" -w -r -C -F -t 1m -b "$easy_block" -o /easy
    awk -v fs="$fs" -v c="$chunk" '/^(write|read) / && NF == 11 { print fs, c, "ior-easy-" $1, $2 }' "$out" >>"$results"
    ran "$out" "${mpi[@]}" "$ior" "${api[@]}" -w -r -C -t 47008 -b 47008 -s "$hard_segments" -o /hard
    awk -v fs="$fs" -v c="$chunk" '/^(write|read) / && NF == 11 { print fs, c, "ior-hard-" $1, $2 }' "$out" >>"$results"
    ran "$out" "${mpi[@]}" "$mdtest" "${api[@]}" -n "$md_files" -F -C -T -r -u -d /md
    awk -v fs="$fs" -v c="$chunk" '/File (creation|stat|removal)/ { print fs, c, "mdtest-" $2, $3 }' "$out" >>"$results"
    ran "$out" "${mpi[@]}" "$mdtest" "${api[@]}" -n "$md_files" -F -C -T -E -r -u -w 3901 -e 3901 -d /mdh
    awk -v fs="$fs" -v c="$chunk" '/File (creation|stat|read|removal)/ { print fs, c, "mdtest-3901-" $2, $3 }' "$out" >>"$results"
    if [ "$fs" = chfs ]; then stop_chfs; else "$bfs/bin/benchfs" cluster down --dir "$work/benchfs" >/dev/null; fi
}

# am_bw: the shared-memory Active Message bandwidth at 1 MiB (MiB/s), one pair of processes.
am_bw() {
    local p=$((port + 7)) log=$work/perftest.out
    local vars=(UCX_MM_ERROR_HANDLING=y UCX_CMA_MEMORY_INVALIDATE=y UCX_KEEPALIVE_INTERVAL=1s UCX_RNDV_SCHEME=put_zcopy UCX_MAX_RNDV_LANES=1 UCX_TCP_PUT_ENABLE=n)
    env "${vars[@]}" timeout 60 "$perftest" -p $p >/dev/null 2>&1 &
    sleep 0.5
    env "${vars[@]}" timeout 60 "$perftest" 127.0.0.1 -p $p -t ucp_am_bw -e -s 1048576 -n 4000 -w 400 -f >"$log" 2>&1 || true
    wait
    grep -E '^[[:space:]]*[0-9]+[[:space:]]+[0-9.]+' "$log" | tail -1 | awk '{ print "limit 0 am-bw-shm-1m", $6 }' >>"$results"
}
perftest=${PERFTEST:-/usr/bin/ucx_perftest}

for round in $(seq "$rounds"); do
    [ -x "$perftest" ] && am_bw
    for chunk in "${chunk_sizes[@]}"; do
        echo "round $round/$rounds, chunk $chunk: CHFS, then BenchFS" >&2
        run chfs "$chunk"
        run benchfs "$chunk"
    done
done

echo "# CHFS 3.0.2 vs BenchFS: $servers servers each, $ranks IOR/mdtest ranks, RDMA threshold $rdma_thresh, median of $rounds interleaved rounds, $(nproc) cores, BenchFS busy poll ${BUSY_POLL_US:-default} us, prefault ${PREFAULT_BYTES:-0} bytes, huge pages ${HUGE_PAGES:-auto}"
# A VM that hands freed memory back to its hypervisor (virtio balloon, device 5, feature
# bit 5) makes every first write into fresh memory wait for the hypervisor: both file
# systems' easy writes then measure it (docs/compare-chfs.md).
for dev in /sys/bus/virtio/devices/*; do
    if [ "$(cat "$dev/device" 2>/dev/null)" = 0x0005 ] && [ "$(cut -c6 "$dev/features" 2>/dev/null)" = 1 ]; then
        echo "# host: a VM with virtio free page reporting: fresh memory is written at the hypervisor's speed"
    fi
done
echo "# ior-easy: -F -t 1m -b $easy_block; ior-hard: shared file -t 47008 -s $hard_segments; mdtest: -n $md_files -F -u (MiB/s; ops/s)"
printf '%-22s %9s %12s %12s %8s\n' workload chunk CHFS BenchFS ratio
# shellcheck disable=SC2016 # awk programs
medians='
    { key = $3 " " $2; v[$1, key, ++n[$1, key]] = $4; keys[key] = 1 }
    function median(fs, key,    m, i, j, t, a) {
        m = n[fs, key]; if (m == 0) return 0
        for (i = 1; i <= m; i++) a[i] = v[fs, key, i]
        for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
        return (m % 2) ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
    }'
awk "$medians"'
    END {
        for (key in keys) {
            split(key, part, " ")
            if (part[1] == "am-bw-shm-1m") continue
            c = median("chfs", key); b = median("benchfs", key)
            printf "%-22s %9s %12.1f %12.1f %7.1fx\n", part[1], part[2], c, b, (c > 0 ? b / c : 0)
        }
    }' "$results" | sort
awk "$medians"'
    END {
        l = median("limit", "am-bw-shm-1m 0")
        if (l == 0) exit
        printf "\n# limit: shared-memory AM bandwidth (ucx_perftest ucp_am_bw -e, 1 MiB, median) %.1f MiB/s\n", l
        for (key in keys) {
            split(key, part, " ")
            if (part[1] ~ /^ior-easy-/)
                printf "%-22s %9s  BenchFS / limit %.2f\n", part[1], part[2], median("benchfs", key) / l
        }
    }' "$results"
