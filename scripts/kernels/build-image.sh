#!/usr/bin/env bash
# Builds what scripts/test-kernels.sh boots for one kernel definition:
#   rootfs.ext4  Debian root with the kernel's modules and matching headers,
#                python3-bpfcc and a venv holding tcplab's dependencies
#   vmlinuz      the distribution's kernel image, taken from that root
#   initrd.gz    a small busybox initramfs that loads the virtio, ext4 and 9p
#                modules and hands over to the project's guest script
#   manifest     what went in (kernel release, package versions)
# Usage: build-image.sh CONF DEPS_FILE OUTDIR   (run as root; network needed)
# Called by test-kernels.sh, which decides when a rebuild is needed.
set -euo pipefail

die() { printf 'build-image: error: %s\n' "$*" >&2; exit 1; }
say() { printf 'build-image: %s\n' "$*"; }

[ $# -eq 3 ] || die "usage: $0 CONF DEPS_FILE OUTDIR"
conf=$1 deps_file=$2 out=$3
[ "$(id -u)" -eq 0 ] || die "run as root: debootstrap and chroot need it"
# shellcheck source=debian12.conf
. "$conf"

work=$(mktemp -d "${out%/*}/build.XXXXXX")
root=$work/root
mounted=()
cleanup() {
    local m
    # Unmount in reverse order before deleting, so rm never walks into the
    # host's /dev or /proc.
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
        m=${mounted[i]}
        mountpoint -q "$m" && umount -l "$m"
    done
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT

mount_into_root() {
    mount --bind /dev "$root/dev" && mounted+=("$root/dev")
    mount -t devpts devpts "$root/dev/pts" && mounted+=("$root/dev/pts")
    mount -t proc proc "$root/proc" && mounted+=("$root/proc")
    mount -t sysfs sysfs "$root/sys" && mounted+=("$root/sys")
}
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 HOME=/root "$@"; }

# --- Debian root --------------------------------------------------------------
say "debootstrap $SUITE from $MIRROR (a few minutes)"
nice -n 10 debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 ||
    { tail -n 20 "$work/debootstrap.log" >&2; die "debootstrap failed (log above): check the network or set TCPLAB_DEBIAN_MIRROR"; }

printf '%s\n' "$APT_SOURCES" >"$root/etc/apt/sources.list"
cp /etc/resolv.conf "$root/etc/resolv.conf"
# Nothing in the root may start services during the build.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod +x "$root/usr/sbin/policy-rc.d"
mount_into_root

say "installing the kernel, its headers, bcc and python in the root"
# shellcheck disable=SC2086
{ in_root apt-get update -q && in_root nice -n 10 apt-get install -y -q --no-install-recommends $PACKAGES; } \
    >"$work/apt.log" 2>&1 || { tail -n 30 "$work/apt.log" >&2; die "apt-get inside the root failed (log above)"; }

# The project's dependencies in a venv, installed now because the VM has no
# network; --system-site-packages keeps bcc (python3-bpfcc) importable.
# setuptools is pinned by pyproject's build-system so the guest can install the
# project itself offline with --no-build-isolation.
say "installing tcplab's dependencies into /opt/tcplab-venv in the root"
# pip trusts the host's CA bundle and index: where TLS goes through an
# inspecting proxy, only the host knows its certificate.
cp "$deps_file" "$root/tmp/requirements.txt"
cp /etc/ssl/certs/ca-certificates.crt "$root/tmp/host-ca.crt" 2>/dev/null ||
    cp "$root/etc/ssl/certs/ca-certificates.crt" "$root/tmp/host-ca.crt"
pip_index=()
[ -z "${PIP_INDEX_URL:-}" ] || pip_index=(--index-url "$PIP_INDEX_URL")
{ in_root /usr/bin/python3 -m venv --system-site-packages /opt/tcplab-venv &&
  in_root nice -n 10 /opt/tcplab-venv/bin/pip install -q --no-cache-dir --cert /tmp/host-ca.crt \
      "${pip_index[@]}" -r /tmp/requirements.txt; } \
    >"$work/pip.log" 2>&1 || { tail -n 30 "$work/pip.log" >&2; die "pip inside the root failed (log above)"; }
in_root /opt/tcplab-venv/bin/python -c 'import bcc, zmq, msgpack, structlog, pytest' ||
    die "the venv in the root cannot import bcc and the test dependencies"

# --- kernel and its matching headers -----------------------------------------
releases=("$root"/lib/modules/*)
[ ${#releases[@]} -eq 1 ] || die "expected one kernel in the root, found: ${releases[*]##*/}"
release=${releases[0]##*/}
# Checked inside the root: the build link is absolute (/usr/src/...), and
# followed from the host it found the host's own headers for any kernel the
# host also has (6.1), none for another (5.10).
in_root test -e "/lib/modules/$release/build/Makefile" ||
    die "headers for $release are missing in the root: the headers package must match linux-image"
grep -q '^CONFIG_KPROBES=y' "$root/boot/config-$release" ||
    die "kernel $release has no kprobes (CONFIG_KPROBES): it cannot test the kprobe attach mode"

# --- initramfs ----------------------------------------------------------------
say "initramfs for $release: $INITRD_MODULES"
ird=$work/initrd
mkdir -p "$ird"/{bin,dev,proc,sys,newroot,modules}
cp "$root/bin/busybox" "$ird/bin/busybox"
# A dynamic busybox would die as /init with no message beyond a kernel panic.
in_root dpkg-query -W busybox-static >/dev/null 2>&1 ||
    die "busybox-static is not installed in the root: add it to PACKAGES in $conf"
# modprobe resolves dependencies and soft dependencies from the root's
# modules.dep (printing paths inside the root), deps first; each module is
# loaded once, in that order.
: >"$ird/modules.list"
for mod in $INITRD_MODULES; do
    modprobe -d "$root" -S "$release" --show-depends "$mod" ||
        die "module $mod not found for $release: fix INITRD_MODULES in $conf"
done | awk '$1 == "insmod" { print $2 }' | awk '!seen[$0]++' | while read -r ko; do
    cp "$ko" "$ird/modules/"
    echo "${ko##*/}" >>"$ird/modules.list"
done
cp "$(dirname "$0")/initrd-init.sh" "$ird/init"
chmod +x "$ird/init"
mkdir -p "$out"
(cd "$ird" && find . | cpio -o -H newc --quiet | gzip -9) >"$out/initrd.gz"
cp "$root/boot/vmlinuz-$release" "$out/vmlinuz"

# --- root filesystem image ------------------------------------------------------
mkdir -p "$root/mnt/tcplab"
echo tcplab-vm >"$root/etc/hostname"
{
    echo "kernel_release=$release"
    echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    in_root dpkg-query -W -f='package ${Package}=${Version}\n' \
        "linux-image-$release" "linux-headers-$release" python3-bpfcc python3
} >"$out/manifest"
in_root apt-get clean
rm -f "$root"/boot/initrd.img-* "$root/usr/sbin/policy-rc.d"
rm -rf "$root"/var/lib/apt/lists/* "$root"/tmp/*
for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount "${mounted[i]}"; done
mounted=()

size_mb=$(( $(du -sm --one-file-system "$root" | cut -f1) * 11 / 10 + ROOTFS_SLACK_MB ))
say "root filesystem image: ${size_mb} MiB"
mkfs.ext4 -q -F -L tcplab-root -d "$root" "$out/rootfs.ext4" "${size_mb}M"
say "built $out (kernel $release)"
