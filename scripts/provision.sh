#!/usr/bin/env bash
# The one set-up script for tcplab, used by the Makefile, CI and the Vagrantfile.
# Run as root. Idempotent: a second run only checks and changes nothing.
# Supports Debian 12 and Ubuntu 22.04/24.04.
#   scripts/provision.sh              full set-up and check, ends with `tcplab doctor`
#   scripts/provision.sh --if-needed  returns at once when everything is in place
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
kernel=$(uname -r)
changed=0

say() { printf 'provision: %s\n' "$*"; }
die() { printf 'provision: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (sudo $0): it installs packages, mounts tracefs and loads eBPF programs"
# What the fast path checks: the venv is current and bcc imports in it, the
# headers link and tracefs are there.
in_place() {
    local venv=$repo/.venv
    [ -f "$venv/.tcplab-installed" ] && [ ! "$repo/pyproject.toml" -nt "$venv/.tcplab-installed" ] &&
        [ -e "/lib/modules/$kernel/build/Makefile" ] &&
        mountpoint -q /sys/kernel/tracing &&
        "$venv/bin/python" -c 'import bcc, zmq' 2>/dev/null &&
        bash "$repo/scripts/build-go.sh" >/dev/null
}
if [ "${1:-}" = --if-needed ] && in_place; then
    exit 0
fi

command -v apt-get >/dev/null || die "apt-get not found: tcplab provisions Debian 12 and Ubuntu 22.04/24.04 only"

# --- packages ---------------------------------------------------------------
# bcc comes from the distribution: python3-bpfcc is the real bcc binding
# (PyPI's "bcc" is an unrelated package).
# procps: sysctl (a test sets one inside a lab host), which minimal images
# (containers, debootstrap --variant=minbase) leave out.
packages=(bpfcc-tools python3-bpfcc libbpfcc iproute2 procps python3-venv python3-pip
          bpftool build-essential chromium golang-go tcpdump)
if [ -r /etc/os-release ] && grep -q '^ID=ubuntu' /etc/os-release; then
    # Ubuntu ships bpftool inside linux-tools and chromium as a snap.
    packages=("${packages[@]/bpftool/linux-tools-common}")
    packages=("${packages[@]/chromium/}")
fi

# Headers for the running kernel when the distribution has them; otherwise
# its default headers, linked below (BCC compiles tracepoint programs with
# them; their argument layout comes from tracefs, so it stays right).
# shellcheck source=apt.sh
. "$repo/scripts/apt.sh"
apt_updated=0
apt_update_once() {
    [ "$apt_updated" -eq 1 ] && return
    say "apt-get update"
    apt_get update -qq
    apt_updated=1
}
if [ ! -e "/lib/modules/$kernel/build/Makefile" ]; then
    headers_pkg="linux-headers-$kernel"
    apt-cache show "$headers_pkg" >/dev/null 2>&1 || apt_update_once
    if ! apt-cache show "$headers_pkg" >/dev/null 2>&1; then
        if grep -q '^ID=ubuntu' /etc/os-release 2>/dev/null; then
            headers_pkg=linux-headers-generic
        else
            headers_pkg=linux-headers-$(dpkg --print-architecture)
        fi
    fi
    packages+=("$headers_pkg")
fi

# vagrant only validates the Vagrantfile in the tests; where the distribution
# no longer ships it (Ubuntu 24.04), that one test is skipped.
if ! dpkg-query -W -f='${Status}' vagrant 2>/dev/null | grep -q 'ok installed'; then
    apt-cache show vagrant >/dev/null 2>&1 || apt_update_once
    apt-cache show vagrant >/dev/null 2>&1 && packages+=(vagrant)
fi

missing=()
for p in "${packages[@]}"; do
    [ -n "$p" ] || continue
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    apt_update_once
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt_get install -y -qq "${missing[@]}" >/dev/null
    changed=1
else
    say "packages present"
fi

# --- kernel headers link ----------------------------------------------------
moddir=/lib/modules/$kernel
if [ -e "$moddir/build/Makefile" ]; then
    say "kernel headers for $kernel present"
else
    build=$(ls -d /usr/src/linux-headers-*-amd64 /usr/src/linux-headers-*-arm64 \
                  /usr/src/linux-headers-*-generic 2>/dev/null | sort -V | tail -n 1 || true)
    [ -n "$build" ] || die "no kernel headers under /usr/src: install your distribution's linux-headers package"
    common=$(ls -d "${build%-*}-common" 2>/dev/null || echo "$build")
    mkdir -p "$moddir"
    ln -sfn "$build" "$moddir/build"
    ln -sfn "$common" "$moddir/source"
    say "no headers package matches kernel $kernel: linked $moddir/build -> $build (BCC needs them to compile; tracepoint layouts come from tracefs, so they stay right)"
    changed=1
fi

# --- tracefs and debugfs ----------------------------------------------------
if ! mountpoint -q /sys/kernel/tracing; then
    mount -t tracefs tracefs /sys/kernel/tracing
    say "mounted tracefs on /sys/kernel/tracing"
    changed=1
fi
if ! mountpoint -q /sys/kernel/debug; then
    mount -t debugfs debugfs /sys/kernel/debug
    say "mounted debugfs on /sys/kernel/debug"
    changed=1
fi

# --- venv ---------------------------------------------------------------------
# From the distribution's python3 with --system-site-packages so that
# `import bcc` (python3-bpfcc) works inside it.
venv=$repo/.venv
stamp=$venv/.tcplab-installed
if [ ! -x "$venv/bin/python" ]; then
    /usr/bin/python3 -m venv --system-site-packages "$venv"
    say "created $venv"
    changed=1
fi
if [ ! -f "$stamp" ] || [ "$repo/pyproject.toml" -nt "$stamp" ]; then
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q -e "$repo[test]"
    touch "$stamp"
    say "installed tcplab (editable, with test extras) into $venv"
    changed=1
else
    say "venv up to date"
fi

# --- the seed's Go programs (scenarios go-*, `tcplab trace` examples) --------
bash "$repo/scripts/build-go.sh"

# --- self-check -------------------------------------------------------------
[ "$changed" -eq 0 ] && say "nothing changed"
exec "$venv/bin/tcplab" doctor
