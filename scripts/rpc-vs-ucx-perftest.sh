#!/usr/bin/env bash
# Runs `benchfs rpc-bench` (Ping over our RPC layer, busy polling on and off) and
# ucx_perftest (ucp_am_lat, ucp_am_bw) on localhost with the same transport, ROUNDS times
# interleaved, and prints one table with the ratios against the goals:
#   TRANSPORT=shm (default): shared memory, as benchfs uses it between processes on one
#     host (network.shared_memory = true), and perftest with the same UCX settings
#     (UCX_MM_ERROR_HANDLING=y UCX_CMA_MEMORY_INVALIDATE=y UCX_KEEPALIVE_INTERVAL=1s UCX_RNDV_SCHEME=put_zcopy UCX_MAX_RNDV_LANES=1 UCX_TCP_PUT_ENABLE=n) and
#     error handling on (-e), as ours. Goals: RTT p50 <= 2 x (2 x ucp_am_lat one-way p50),
#     bandwidth >= 0.9 x ucp_am_bw at 1 MiB and 4 MiB.
#   TRANSPORT=tcp: both over loopback TCP only (UCX_TLS=tcp UCX_TCP_PUT_ENABLE=n, shared_memory = false).
#     Goals: RTT p50 <= 3 x perftest's round trip, bandwidth >= 0.9 x.
# The other transport's perftest is printed as a reference column. A "binding" row gives
# the floor under ours: the same 8-byte round trip through benchfs-ucx alone, with no RPC
# layer (crates/ucx/examples/am_ping.rs), so the table shows what UCX and the binding
# cost and what the RPC layer and the server add.
#
# Each round runs both tools back to back, and a ratio is taken within a round; the table
# gives the median over rounds of each figure and of each ratio, with the smallest and
# largest ratio, because this kind of machine is shared and one run can be off by 2x.
#
# Usage: scripts/rpc-vs-ucx-perftest.sh
#   ROUNDS     interleaved rounds (default 3)
#   POLL_LIST  busy-poll windows for rpc-bench, us (default 0,10,50,200)
#   POLL_ON    the window reported as "polling on" (default 200, the config default); "off" is 0
#   WINDOW     pings in flight (default 16); also ucx_perftest -O for ucp_am_bw
#   SECS       seconds per bandwidth figure (default 1); PINGS per RTT figure (20000)
#   OUT_DIR    where raw outputs go (default target/rpc-vs-ucx-perftest)
#   RPC_BENCH_ARGS  more rpc-bench flags, e.g. --copy-payload
#
# rpc-bench sends one shared payload buffer without copying it, as ucx_perftest does and
# as the blocking API's writes do (they lend the caller's slice); with --copy-payload each
# ping first copies it into a send buffer, as the async FsClient::write does.
#
# The receive side is not alike: ucp_am_bw's receiver lands every message in one buffer,
# which stays in the CPU's cache, while a benchfsd server lands each payload in a store
# buffer of its own, as it must for chunks. A Ping's buffer goes back to the store's page
# pool after the reply, and the pool hands the run given back last out first, so pings
# reuse as many buffers as the server receives into at once (network.inflight_payload_bytes:
# two at 4 MiB). Where even two 4 MiB buffers outgrow the cache, each copy goes to memory:
# on our 2-core VM one core copied 4 MiB by process_vm_writev at about 8,900 MiB/s into
# one buffer, 5,500 into two in turn and 4,300 into sixteen. A chunk write, whose pages
# the chunk keeps, always lands in fresh memory.
#
# ucx_perftest's "MB/s" is MiB/s (it divides by 2^20); rpc-bench prints MiB/s too.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
POLL_LIST=${POLL_LIST:-0,10,50,200}
POLL_ON=${POLL_ON:-200}
WINDOW=${WINDOW:-16}
SECS=${SECS:-1}
PINGS=${PINGS:-20000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT_DIR=${OUT_DIR:-$ROOT/target/rpc-vs-ucx-perftest}
PERFTEST=${PERFTEST:-/usr/bin/ucx_perftest}
RPC_BENCH_ARGS=${RPC_BENCH_ARGS:-}
TRANSPORT=${TRANSPORT:-shm}
SHM_ENV="UCX_MM_ERROR_HANDLING=y UCX_CMA_MEMORY_INVALIDATE=y UCX_KEEPALIVE_INTERVAL=1s UCX_RNDV_SCHEME=put_zcopy UCX_MAX_RNDV_LANES=1 UCX_TCP_PUT_ENABLE=n"
TCP_ENV="UCX_TLS=tcp UCX_TCP_PUT_ENABLE=n"
case "$TRANSPORT" in
shm) OURS_ENV="BENCHFS_NETWORK_SHARED_MEMORY=true" PT_ENV=$SHM_ENV REF=tcp REF_ENV=$TCP_ENV RTT_GOAL=2 AM_ENV= AM_FLAGS= ;;
tcp) OURS_ENV="BENCHFS_NETWORK_SHARED_MEMORY=false $TCP_ENV" PT_ENV=$TCP_ENV REF=shm REF_ENV=$SHM_ENV RTT_GOAL=3 AM_ENV=$TCP_ENV AM_FLAGS=--tcp ;;
*) echo "TRANSPORT must be shm or tcp" >&2; exit 1 ;;
esac
SIZES=(8 4096 32768 65536 1048576 4194304)
# perftest iterations per bandwidth size, about a second each over loopback tcp.
declare -A BW_ITERS=([8]=200000 [4096]=100000 [32768]=20000 [65536]=10000 [1048576]=1000 [4194304]=250)
LAT_ITERS=${LAT_ITERS:-100000}

[ -x "$PERFTEST" ] || { echo "ucx_perftest not found at $PERFTEST" >&2; exit 1; }
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "ROUNDS must be a positive integer" >&2; exit 1; }
case ",$POLL_LIST," in *",$POLL_ON,"*) ;; *) echo "POLL_ON=$POLL_ON is not in POLL_LIST=$POLL_LIST" >&2; exit 1 ;; esac
case ",$POLL_LIST," in *",0,"*) ;; *) echo "POLL_LIST must include 0 (polling off)" >&2; exit 1 ;; esac
mkdir -p "$OUT_DIR"

(cd "$ROOT" && cargo build --release --bins && cargo build --release -p benchfs-ucx --example am_ping)
BENCHFS=$ROOT/target/release/benchfs
AM_PING=$ROOT/target/release/examples/am_ping

echo "# host=$(hostname) cpus=$(nproc) cpu=\"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)\"" \
     "kernel=$(uname -r) load=\"$(cut -d' ' -f1-3 /proc/loadavg)\""
echo "# commit=$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo none)" \
     "ucx=$(ucx_info -v 2>/dev/null | sed -n 's/^# Version //p' | head -1)"
echo "# transport=$TRANSPORT perftest_env=\"$PT_ENV\" rounds=$ROUNDS poll_list=$POLL_LIST poll_on=$POLL_ON window=$WINDOW secs=$SECS pings=$PINGS lat_iters=$LAT_ITERS rpc_bench_args=\"$RPC_BENCH_ARGS\""

# ours ROUND KIND POLL SIZE KEY: one value from rpc-bench's key=value records.
ours() {
    { grep "^$2 busy_poll_us=$3 payload_bytes=$4 " "$OUT_DIR/rpc-bench-$1.txt" || true; } \
        | sed -n "s/.* $5=\([^ ]*\).*/\1/p" | head -1
}

PORT=$((20000 + RANDOM % 20000))

# perftest ENV NAME PORT ARGS...: runs a server and a client on localhost with the
# environment ENV (VAR=VALUE words); prints the
# final line (-f: iterations, p50, avg, overall latency in us; avg, overall MiB/s; avg,
# overall msg/s). It runs in $(...), so the caller picks a fresh PORT each time.
perftest() {
    local vars=$1 name=$2 PORT=$3; shift 3
    local log="$OUT_DIR/perftest-$name.txt" srv
    # shellcheck disable=SC2086 # vars is a list of VAR=VALUE words
    env $vars timeout 120 "$PERFTEST" -p "$PORT" >"$log.server" 2>&1 &
    srv=$!
    local try
    for try in $(seq 1 50); do
        # shellcheck disable=SC2086
        if env $vars timeout 120 "$PERFTEST" 127.0.0.1 -p "$PORT" -f "$@" >"$log" 2>&1; then
            break
        fi
        grep -q 'connect' "$log" || { cat "$log" >&2; kill "$srv" 2>/dev/null; return 1; }
        sleep 0.1
    done
    wait "$srv" || true
    grep -E '^[[:space:]]*[0-9]+[[:space:]]+[0-9.]+' "$log" | tail -1
}

# perftest_round NAME ENV ROUND: ucp_am_lat at 8 B and ucp_am_bw at every size, into PT.
declare -A PT
perftest_round() {
    local tls=$1 t=$2 r=$3 line size n
    PORT=$((PORT + 1))
    line=$(perftest "$t" "am_lat-$tls-$r" "$PORT" -t ucp_am_lat -e -s 8 -n "$LAT_ITERS" -w $((LAT_ITERS / 10)))
    PT[lat,$tls,$r]=$(awk '{print $2}' <<<"$line")
    echo "perftest round=$r tls=$tls test=ucp_am_lat size=8 p50_us=${PT[lat,$tls,$r]} avg_us=$(awk '{print $3}' <<<"$line")"
    for size in "${SIZES[@]}"; do
        n=${BW_ITERS[$size]}
        PORT=$((PORT + 1))
        line=$(perftest "$t" "am_bw-$size-$tls-$r" "$PORT" -t ucp_am_bw -e -s "$size" -O "$WINDOW" -n "$n" -w $((n / 10)))
        PT[bw,$tls,$size,$r]=$(awk '{print $6}' <<<"$line")
        echo "perftest round=$r tls=$tls test=ucp_am_bw size=$size window=$WINDOW mib_per_s=${PT[bw,$tls,$size,$r]}"
    done
}

# floor_round ROUND: am_ping's round trip (the binding alone), into FLOOR.
declare -A FLOOR
floor_round() {
    local r=$1 line="" srv try
    PORT=$((PORT + 1))
    # shellcheck disable=SC2086 # AM_ENV is a list of VAR=VALUE words, AM_FLAGS of flags
    env $AM_ENV timeout 120 "$AM_PING" server "$PORT" $AM_FLAGS >"$OUT_DIR/am_ping-server-$r.txt" 2>&1 &
    srv=$!
    for try in $(seq 1 50); do
        sleep 0.1
        # shellcheck disable=SC2086
        line=$(env $AM_ENV timeout 120 "$AM_PING" client "$PORT" "$PINGS" $AM_FLAGS 2>"$OUT_DIR/am_ping-$r.err") && break
    done
    wait "$srv" || true
    FLOOR[$r]=$(sed -n 's/.* p50_us=\([^ ]*\).*/\1/p' <<<"$line")
    echo "am_ping round=$r test=rtt size=8 p50_us=${FLOOR[$r]}"
}

for r in $(seq 1 "$ROUNDS"); do
    floor_round "$r"
    # shellcheck disable=SC2086 # RPC_BENCH_ARGS is a list of flags
    env $OURS_ENV "$BENCHFS" rpc-bench --busy-poll-us "$POLL_LIST" --window "$WINDOW" \
        --seconds "$SECS" --pings "$PINGS" $RPC_BENCH_ARGS | sed "s/^/round=$r /" \
        | tee "$OUT_DIR/rpc-bench-$r.raw"
    sed "s/^round=$r //" "$OUT_DIR/rpc-bench-$r.raw" >"$OUT_DIR/rpc-bench-$r.txt"
    grep -q '^bw ' "$OUT_DIR/rpc-bench-$r.txt" || { echo "rpc-bench printed no results" >&2; exit 1; }
    perftest_round "$TRANSPORT" "$PT_ENV" "$r"
done
# The other transport, once, as a reference.
perftest_round "$REF" "$REF_ENV" 1

# --- Table --------------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0 && a != "") printf "%.2f", a / b; else printf "n/a" }'; }
verdict() { awk -v r="$1" -v g="$2" -v dir="$3" 'BEGIN {
    if (r == "n/a") print "n/a"; else if ((dir == "le" && r <= g) || (dir == "ge" && r >= g)) print "ok"; else print "MISS" }'; }
# stats V...: "median min max n" of the numeric arguments (a round that printed nothing
# is left out, and n says how many counted).
stats() { printf '%s\n' "$@" | { grep -E '^[0-9.]+$' || true; } | sort -g | awk '{ v[++n] = $1 } END {
    if (n == 0) { print "n/a n/a n/a 0"; exit }
    m = (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
    printf "%.2f %.2f %.2f %d\n", m, v[1], v[n], n }'; }
median() { stats "$@" | cut -d' ' -f1; }
# rounds_note N: marks a ratio that fewer than all rounds produced.
rounds_note() { if [ "$1" -lt "$ROUNDS" ]; then printf ' (%s of %s rounds)' "$1" "$ROUNDS"; fi; }

echo
echo "# medians over $ROUNDS rounds; ratio = ours / ucx_perftest ($TRANSPORT) within a round,"
echo "# median [min..max] over rounds. Goals: RTT ratio <= $RTT_GOAL.00, bandwidth ratio >= 0.90"
printf '%-22s %-9s %12s %14s %20s %6s %16s\n' figure polling benchfs "perftest_$TRANSPORT" "ratio [min..max]" goal "perftest_$REF"
for mode in on off; do
    poll=$([ $mode = on ] && echo "$POLL_ON" || echo 0)
    vals=() refs=() ratios=()
    for r in $(seq 1 "$ROUNDS"); do
        v=$(ours "$r" rtt "$poll" 8 p50_us); ref=$(awk -v l="${PT[lat,$TRANSPORT,$r]}" 'BEGIN { printf "%.2f", 2 * l }')
        vals+=("$v"); refs+=("$ref"); ratios+=("$(ratio "$v" "$ref")")
    done
    read -r rm rlo rhi rn <<<"$(stats "${ratios[@]}")"
    printf '%-22s %-9s %12s %14s %20s %6s %16s\n' "rtt p50 us (8 B)" "$mode($poll)" "$(median "${vals[@]}")" "$(median "${refs[@]}")" \
        "$rm [$rlo..$rhi]$(rounds_note "$rn")" "$(verdict "$rm" "$RTT_GOAL" le)" "$(awk -v l="${PT[lat,$REF,1]}" 'BEGIN { printf "%.2f", 2 * l }')"
done
vals=() refs=() ratios=()
for r in $(seq 1 "$ROUNDS"); do
    ref=$(awk -v l="${PT[lat,$TRANSPORT,$r]}" 'BEGIN { printf "%.2f", 2 * l }')
    vals+=("${FLOOR[$r]}"); refs+=("$ref"); ratios+=("$(ratio "${FLOOR[$r]}" "$ref")")
done
read -r rm rlo rhi rn <<<"$(stats "${ratios[@]}")"
printf '%-22s %-9s %12s %14s %20s %6s %16s\n' "rtt p50 us (8 B)" "binding" "$(median "${vals[@]}")" "$(median "${refs[@]}")" \
    "$rm [$rlo..$rhi]$(rounds_note "$rn")" "-" "-"
for size in "${SIZES[@]}"; do
    for mode in on off; do
        poll=$([ $mode = on ] && echo "$POLL_ON" || echo 0)
        vals=() refs=() ratios=()
        for r in $(seq 1 "$ROUNDS"); do
            v=$(ours "$r" bw "$poll" "$size" mib_per_s); ref=${PT[bw,$TRANSPORT,$size,$r]}
            vals+=("$v"); refs+=("$ref"); ratios+=("$(ratio "$v" "$ref")")
        done
        read -r rm rlo rhi rn <<<"$(stats "${ratios[@]}")"
        goal=-
        if [ "$size" -ge 1048576 ]; then goal=$(verdict "$rm" 0.9 ge); fi
        printf '%-22s %-9s %12s %14s %20s %6s %16s\n' "bw MiB/s ($size B)" "$mode($poll)" "$(median "${vals[@]}")" "$(median "${refs[@]}")" \
            "$rm [$rlo..$rhi]$(rounds_note "$rn")" "$goal" "${PT[bw,$REF,$size,1]}"
    done
done

echo
echo "# rtt by busy_poll_us (8 B payload), medians over rounds: p50 / p99 / mean us"
IFS=, read -ra polls <<<"$POLL_LIST"
for poll in "${polls[@]}"; do
    p50=() p99=() mean=()
    for r in $(seq 1 "$ROUNDS"); do
        p50+=("$(ours "$r" rtt "$poll" 8 p50_us)"); p99+=("$(ours "$r" rtt "$poll" 8 p99_us)"); mean+=("$(ours "$r" rtt "$poll" 8 mean_us)")
    done
    printf 'busy_poll_us=%-5s p50=%-9s p99=%-9s mean=%s\n' "$poll" "$(median "${p50[@]}")" "$(median "${p99[@]}")" "$(median "${mean[@]}")"
done
echo "# load at end: $(cut -d' ' -f1-3 /proc/loadavg); raw outputs in $OUT_DIR"
