#!/usr/bin/env bash
# K "hosts" on one machine, as network namespaces on one bridge, to try BenchFS on several
# hosts (UCX over TCP between them) and to cut one host off. Needs root and iproute2.
#
#   scripts/netns-hosts.sh up K PREFIX          namespaces PREFIX-h1 .. PREFIX-hK, PREFIX-client
#   scripts/netns-hosts.sh info PREFIX          one line per host: name namespace device address
#   scripts/netns-hosts.sh link PREFIX NAME up|down   plug or unplug host NAME (h3, client)
#   scripts/netns-hosts.sh down PREFIX          remove everything (idempotent)
#   scripts/netns-hosts.sh exec PREFIX NAME CMD...    run CMD on host NAME
#
# Layout: the bridge br0 lives in its own namespace, PREFIX-br, and each host's namespace
# has one veth (veth-<name>, e.g. veth-h3) whose other end (port-<name>) is a port of br0.
# The veths are created inside the namespaces, so nothing, not even for a moment, is added
# to the network this script runs in, and no traffic between the hosts can leave them.
# Host N has ${SUBNET}.(10+N)/24, the client ${SUBNET}.2/24; SUBNET defaults to 10.213.0
# (NETNS_HOSTS_SUBNET). The addresses exist only inside the namespaces, so they cannot
# clash with this machine's own. `link NAME down` takes the bridge's port of that host down:
# a pulled cable, the host itself keeps running and keeps its address.
#
# `down` stops what still runs in the namespaces (SIGTERM, then SIGKILL after 5 s; the
# processes `ip netns pids` lists), deletes the namespaces and with them every veth and the
# bridge. It succeeds when there is nothing to remove.
#
# `exec` runs a command on a host: in its network namespace, and in an IPC and a UTS
# namespace of its own (host name: the namespace's name), as a separate machine would be.
# The IPC namespace matters: UCX joins processes of one kernel and one IPC namespace by
# shared memory, which separate hosts cannot do (README.md: "Several hosts on one
# machine").
set -euo pipefail

SUBNET="${NETNS_HOSTS_SUBNET:-10.213.0}"
# How long links may take to come up; a liveness bound, not an expectation.
UP_WAIT_SECS=20

die() {
    echo "netns-hosts.sh: $*" >&2
    exit 1
}

usage() {
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

check_prefix() {
    [[ "$1" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,40}$ ]] ||
        die "PREFIX must be letters, digits, '_', '.', '-' (at most 41): '$1'"
}

# The namespaces of PREFIX that exist now.
namespaces_of() {
    ip netns list | awk '{print $1}' | grep -E "^$(printf '%s' "$1" | sed 's/[.]/\\./g')-(h[0-9]+|client|br)$" || true
}

# name -> address
addr_of() {
    case "$1" in
    client) echo "${SUBNET}.2" ;;
    h*) echo "${SUBNET}.$((10 + ${1#h}))" ;;
    esac
}

wait_up() {
    local ns=$1 dev=$2 deadline=$((SECONDS + UP_WAIT_SECS)) state
    # UCX uses an interface once it is up with carrier on both ends ("state UP").
    while state=$(ip -n "$ns" -o link show dev "$dev") && [[ "$state" != *"state UP"* ]]; do
        ((SECONDS < deadline)) || die "$dev in $ns did not come up: $state"
        sleep 0.05
    done
}

# attach PREFIX NAME: namespace PREFIX-NAME with a veth to the bridge and its address.
attach() {
    local prefix=$1 name=$2 ns="$1-$2" br="$1-br"
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip -n "$br" link add "port-$name" type veth peer name "veth-$name" netns "$ns"
    ip -n "$br" link set "port-$name" master br0 up
    ip -n "$ns" addr add "$(addr_of "$name")/24" dev "veth-$name"
    ip -n "$ns" link set "veth-$name" up
}

cmd_up() {
    local k=$1 prefix=$2
    [[ "$k" =~ ^[0-9]+$ ]] && ((k >= 1 && k <= 200)) || die "K must be 1..200: '$k'"
    check_prefix "$prefix"
    [[ -z "$(namespaces_of "$prefix")" ]] ||
        die "namespaces of $prefix exist already (scripts/netns-hosts.sh down $prefix)"
    # Anything that fails below leaves nothing behind.
    UP_PREFIX=$prefix
    trap 'cmd_down "$UP_PREFIX" >/dev/null 2>&1 || true' EXIT
    ip netns add "$prefix-br"
    ip -n "$prefix-br" link set lo up
    ip -n "$prefix-br" link add br0 type bridge stp_state 0 forward_delay 0
    ip -n "$prefix-br" link set br0 up
    local names=(client)
    for ((i = 1; i <= k; i++)); do names+=("h$i"); done
    for name in "${names[@]}"; do attach "$prefix" "$name"; done
    for name in "${names[@]}"; do wait_up "$prefix-$name" "veth-$name"; done
    trap - EXIT
    cmd_info "$prefix"
}

cmd_info() {
    local prefix=$1 ns name dev addr
    check_prefix "$prefix"
    for ns in $(namespaces_of "$prefix" | sort -V); do
        name=${ns#"$prefix"-}
        [[ "$name" == br ]] && continue
        dev="veth-$name"
        addr=$(ip -n "$ns" -o -4 addr show dev "$dev" | awk '{print $4}' | cut -d/ -f1)
        echo "$name $ns $dev $addr"
    done
}

cmd_link() {
    local prefix=$1 name=$2 state=$3
    check_prefix "$prefix"
    [[ "$state" == up || "$state" == down ]] || die "link state must be up or down: '$state'"
    ip -n "$prefix-br" link set "port-$name" "$state"
    if [[ "$state" == up ]]; then wait_up "$prefix-$name" "veth-$name"; fi
}

# Stops what runs in the namespace `ns`, by the pids `ip netns pids` lists.
stop_processes() {
    local ns=$1 pids deadline=$((SECONDS + 5))
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    [[ -z "$pids" ]] && return
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    while [[ -n "$(ip netns pids "$ns" 2>/dev/null || true)" ]] && ((SECONDS < deadline)); do
        sleep 0.05
    done
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    # shellcheck disable=SC2086
    [[ -z "$pids" ]] || kill -KILL $pids 2>/dev/null || true
}

cmd_down() {
    local prefix=$1 ns
    check_prefix "$prefix"
    for ns in $(namespaces_of "$prefix"); do stop_processes "$ns"; done
    # The bridge's namespace first (PREFIX-br sorts first): deleting it deletes every
    # port, and with each port the veth inside a host. A namespace that a process still
    # holds (SIGKILL did not end it yet) loses its name now and goes when the process does.
    for ns in $(namespaces_of "$prefix" | sort); do ip netns del "$ns"; done
    [[ -z "$(namespaces_of "$prefix")" ]] || die "namespaces of $prefix remain: $(namespaces_of "$prefix" | tr '\n' ' ')"
}

command -v ip >/dev/null || die "iproute2 (ip) is not installed"
case "${1:-}" in
up) (($# == 3)) || usage; cmd_up "$2" "$3" ;;
down) (($# == 2)) || usage; cmd_down "$2" ;;
info) (($# == 2)) || usage; cmd_info "$2" ;;
link) (($# == 4)) || usage; cmd_link "$2" "$3" "$4" ;;
exec)
    (($# >= 4)) || usage
    check_prefix "$2"
    ns="$2-$3"
    shift 3
    # shellcheck disable=SC2016 # $0 and $@ are the inner shell's.
    exec ip netns exec "$ns" unshare --uts --ipc sh -c 'hostname "$0" && exec "$@"' "$ns" "$@"
    ;;
*) usage ;;
esac
