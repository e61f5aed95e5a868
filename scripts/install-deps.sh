#!/usr/bin/env bash
# Installs the system packages BenchFS builds and tests against, on Debian or Ubuntu as
# root; elsewhere it says what is missing.
set -euo pipefail

# build-essential: cc and make for the C API tests; MPI and autotools: IOR and mdtest;
# fonts-dejavu-core: the font of the benchmark plots.
packages=(pkg-config libucx-dev ucx-utils fuse3 libfuse3-dev fio jq iproute2 build-essential
    openmpi-bin libopenmpi-dev autoconf automake libtool fonts-dejavu-core)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ -r /etc/os-release ] && grep -qiE '^(ID|ID_LIKE)=.*(debian|ubuntu)' /etc/os-release && [ "$(id -u)" = 0 ]; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    echo "BenchFS needs these packages (Debian/Ubuntu names): ${missing[*]}" >&2
    echo "install them as root, e.g.: apt-get install ${missing[*]}" >&2
    echo "elsewhere: UCX >= 1.12 with its pkg-config file, libfuse3, fio" >&2
    exit 1
fi
