# Sourced by the side-by-side scripts: starts and stops CHFS servers on this machine, as
# ../shared/peers/README.md says to run them (see compare-chfs.sh for why that is fair).
# The caller sets `servers` (how many), `chfs_dir` (a tmpfs directory for their stores)
# and `port` (a base port; each start moves 10 on), and has chfsd and chlist on PATH.

chfs_pids=()

# stop_chfs: SIGTERM to the servers (and anything else in chfs_pids), SIGKILL after 10 s.
stop_chfs() {
    [ ${#chfs_pids[@]} -gt 0 ] || return 0
    kill -TERM "${chfs_pids[@]}" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "${chfs_pids[@]}" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "${chfs_pids[@]}" 2>/dev/null || true
    wait "${chfs_pids[@]}" 2>/dev/null || true
    chfs_pids=()
}

# start_chfs: `servers` servers on fresh ports and empty stores; exports CHFS_SERVER.
start_chfs() {
    local t=$chfs_dir
    rm -rf "$t" && mkdir -p "$t"
    port=$((port + 10))
    chfsd -f -H 0 -T 1 -p tcp -h 127.0.0.1:$port -n s0 -c "$t/s0" -l "$t/s0.log" -S "$t/info" >"$t/s0.out" 2>&1 &
    chfs_pids+=($!)
    for _ in $(seq 100); do [ -s "$t/info" ] && break; sleep 0.1; done
    local first
    first=$(head -1 "$t/info")
    for i in $(seq 1 $((servers - 1))); do
        chfsd -f -H 0 -T 1 -p tcp -h 127.0.0.1:$((port + i)) -n "s$i" -c "$t/s$i" -l "$t/s$i.log" "$first" >"$t/s$i.out" 2>&1 &
        chfs_pids+=($!)
        sleep 1
    done
    export CHFS_SERVER=$first
    CHFS_SERVER=$(chlist -c)
    export CHFS_SERVER
}
