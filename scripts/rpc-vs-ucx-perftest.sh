#!/usr/bin/env bash
# Runs `benchfs rpc-bench` (Ping over our RPC layer, busy polling on and off) and
# ucx_perftest (ucp_am_lat, ucp_am_bw) on localhost in one run, with the same transport,
# and prints one table with the ratios against the goals:
#   RTT:       our ping p50 <= 3 x (2 x ucp_am_lat one-way p50)
#   bandwidth: our pipelined ping >= 0.9 x ucp_am_bw, at 1 MiB and 4 MiB
#
# Usage: scripts/rpc-vs-ucx-perftest.sh
#   POLL_LIST  busy-poll windows for rpc-bench, us (default 0,10,50,200)
#   POLL_ON    the window reported as "polling on" (default 200, the config default); "off" is 0
#   WINDOW     pings in flight (default 16); also ucx_perftest -O for ucp_am_bw
#   SECS       seconds per bandwidth figure (default 1); PINGS per RTT figure (20000)
#   OUT_DIR    where raw outputs go (default target/rpc-vs-ucx-perftest)
#
# Transport: our endpoints ask for peer error handling, which UCX 1.13 offers only over
# tcp, so BenchFS runs with UCX_TLS=tcp and the like-for-like perftest does too (with -e,
# error handling on, as ours). perftest with UCX's default transports (shared memory on
# one host) is printed as a reference, not used in the ratios.
# ucx_perftest's "MB/s" is MiB/s (it divides by 2^20); rpc-bench prints MiB/s too.
set -euo pipefail

POLL_LIST=${POLL_LIST:-0,10,50,200}
POLL_ON=${POLL_ON:-200}
WINDOW=${WINDOW:-16}
SECS=${SECS:-1}
PINGS=${PINGS:-20000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT_DIR=${OUT_DIR:-$ROOT/target/rpc-vs-ucx-perftest}
PERFTEST=${PERFTEST:-/usr/bin/ucx_perftest}
SIZES=(8 4096 32768 65536 1048576 4194304)
# perftest iterations per bandwidth size, about a second each over loopback tcp.
declare -A BW_ITERS=([8]=200000 [4096]=100000 [32768]=20000 [65536]=10000 [1048576]=1000 [4194304]=250)
LAT_ITERS=${LAT_ITERS:-100000}

[ -x "$PERFTEST" ] || { echo "ucx_perftest not found at $PERFTEST" >&2; exit 1; }
case ",$POLL_LIST," in *",$POLL_ON,"*) ;; *) echo "POLL_ON=$POLL_ON is not in POLL_LIST=$POLL_LIST" >&2; exit 1 ;; esac
case ",$POLL_LIST," in *",0,"*) ;; *) echo "POLL_LIST must include 0 (polling off)" >&2; exit 1 ;; esac
mkdir -p "$OUT_DIR"

(cd "$ROOT" && cargo build --release --bins)
BENCHFS=$ROOT/target/release/benchfs

echo "# host=$(hostname) cpus=$(nproc) cpu=\"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)\"" \
     "kernel=$(uname -r) load=\"$(cut -d' ' -f1-3 /proc/loadavg)\""
echo "# commit=$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo none)" \
     "ucx=$(ucx_info -v 2>/dev/null | sed -n 's/^# Version //p' | head -1)"
echo "# poll_list=$POLL_LIST poll_on=$POLL_ON window=$WINDOW secs=$SECS pings=$PINGS lat_iters=$LAT_ITERS"

# --- BenchFS ----------------------------------------------------------------------------
UCX_TLS=tcp "$BENCHFS" rpc-bench --busy-poll-us "$POLL_LIST" --window "$WINDOW" \
    --seconds "$SECS" --pings "$PINGS" | tee "$OUT_DIR/rpc-bench.txt"
grep -q '^bw ' "$OUT_DIR/rpc-bench.txt" || { echo "rpc-bench printed no results" >&2; exit 1; }

# ours KIND POLL SIZE KEY: one value from rpc-bench's key=value records.
ours() {
    grep "^$1 busy_poll_us=$2 payload_bytes=$3 " "$OUT_DIR/rpc-bench.txt" | sed -n "s/.* $4=\([^ ]*\).*/\1/p" | head -1
}

# --- ucx_perftest -----------------------------------------------------------------------
PORT=$((20000 + RANDOM % 20000))

# perftest TLS NAME ARGS...: runs a server and a client on localhost; prints the final line
# (-f: iterations, p50, avg, overall latency in us; avg, overall MiB/s; avg, overall msg/s).
perftest() {
    local tls=$1 name=$2; shift 2
    PORT=$((PORT + 1))
    local log="$OUT_DIR/perftest-$name.txt" srv
    env ${tls:+UCX_TLS=$tls} timeout 120 "$PERFTEST" -p "$PORT" >"$log.server" 2>&1 &
    srv=$!
    local try
    for try in $(seq 1 50); do
        if env ${tls:+UCX_TLS=$tls} timeout 120 "$PERFTEST" 127.0.0.1 -p "$PORT" -f "$@" >"$log" 2>&1; then
            break
        fi
        grep -q 'connect' "$log" || { cat "$log" >&2; kill "$srv" 2>/dev/null; return 1; }
        sleep 0.1
    done
    wait "$srv" || true
    grep -E '^[[:space:]]*[0-9]+[[:space:]]+[0-9.]+' "$log" | tail -1
}

declare -A PT
for tls in tcp default; do
    t=$([ "$tls" = default ] && echo "" || echo "$tls")
    line=$(perftest "$t" "am_lat-$tls" -t ucp_am_lat -e -s 8 -n "$LAT_ITERS" -w $((LAT_ITERS / 10)))
    PT[lat,$tls]=$(awk '{print $2}' <<<"$line")
    PT[latavg,$tls]=$(awk '{print $3}' <<<"$line")
    echo "perftest tls=$tls test=ucp_am_lat size=8 p50_us=${PT[lat,$tls]} avg_us=${PT[latavg,$tls]}"
    for size in "${SIZES[@]}"; do
        n=${BW_ITERS[$size]}
        line=$(perftest "$t" "am_bw-$size-$tls" -t ucp_am_bw -e -s "$size" -O "$WINDOW" -n "$n" -w $((n / 10)))
        PT[bw,$tls,$size]=$(awk '{print $6}' <<<"$line")
        echo "perftest tls=$tls test=ucp_am_bw size=$size window=$WINDOW mib_per_s=${PT[bw,$tls,$size]}"
    done
done

# --- Table --------------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0 && a != "") printf "%.2f", a / b; else printf "n/a" }'; }
verdict() { awk -v r="$1" -v g="$2" -v dir="$3" 'BEGIN {
    if (r == "n/a") print "n/a"; else if ((dir == "le" && r <= g) || (dir == "ge" && r >= g)) print "ok"; else print "MISS" }'; }

echo
echo "# ratios: ours / ucx_perftest (UCX_TLS=tcp); RTT goal <= 3.00, bandwidth goal >= 0.90"
printf '%-22s %-9s %12s %14s %8s %6s %16s\n' figure polling benchfs perftest_tcp ratio goal perftest_default
rtt_ref=$(awk -v l="${PT[lat,tcp]}" 'BEGIN { printf "%.2f", 2 * l }')
rtt_def=$(awk -v l="${PT[lat,default]}" 'BEGIN { printf "%.2f", 2 * l }')
for mode in on off; do
    poll=$([ $mode = on ] && echo "$POLL_ON" || echo 0)
    ours_rtt=$(ours rtt "$poll" 8 p50_us)
    r=$(ratio "$ours_rtt" "$rtt_ref")
    printf '%-22s %-9s %12s %14s %8s %6s %16s\n' "rtt p50 us (8 B)" "$mode($poll)" "$ours_rtt" "$rtt_ref" "$r" "$(verdict "$r" 3 le)" "$rtt_def"
done
for size in "${SIZES[@]}"; do
    for mode in on off; do
        poll=$([ $mode = on ] && echo "$POLL_ON" || echo 0)
        ours_bw=$(ours bw "$poll" "$size" mib_per_s)
        r=$(ratio "$ours_bw" "${PT[bw,tcp,$size]}")
        goal=-
        if [ "$size" -ge 1048576 ]; then goal=$(verdict "$r" 0.9 ge); fi
        printf '%-22s %-9s %12s %14s %8s %6s %16s\n' "bw MiB/s ($size B)" "$mode($poll)" "$ours_bw" "${PT[bw,tcp,$size]}" "$r" "$goal" "${PT[bw,default,$size]}"
    done
done

echo
echo "# rtt by busy_poll_us (8 B payload): p50 / p99 / mean us"
IFS=, read -ra polls <<<"$POLL_LIST"
for poll in "${polls[@]}"; do
    printf 'busy_poll_us=%-5s p50=%-9s p99=%-9s mean=%s\n' "$poll" "$(ours rtt "$poll" 8 p50_us)" "$(ours rtt "$poll" 8 p99_us)" "$(ours rtt "$poll" 8 mean_us)"
done
echo "# load at end: $(cut -d' ' -f1-3 /proc/loadavg); raw outputs in $OUT_DIR"
