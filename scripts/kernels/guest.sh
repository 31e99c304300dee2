#!/bin/bash
# PID 1 of the test VM (started by the initramfs from the 9p share that
# test-kernels.sh prepared):
#   /mnt/tcplab/src        a copy of the working tree
#   /mnt/tcplab/tests.args the pytest arguments, one per line
#   /mnt/tcplab/modes      the attach modes to run, one per line
#   /mnt/tcplab/out/       results for the host: kprobe-check.log, doctor.log,
#                          pytest-<mode>.log and .rc, then `done`
# No `set -e`: whatever fails, the results written so far must reach the host
# and the VM must power off, or the host only sees its time limit expire.
set -uo pipefail

share=/mnt/tcplab
out=$share/out
export PATH=/opt/tcplab-venv/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1

poweroff_now() {
    sync
    echo o >/proc/sysrq-trigger
    sleep 60
}
trap poweroff_now EXIT

step() { printf '\n=== tcplab-vm: %s\n' "$*"; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts && mount -t tmpfs tmpfs /dev/shm
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf
# No udev here: modules the tests need beyond the initramfs' come by hand.
modprobe -a veth 2>/dev/null
ip link set lo up
hostname tcplab-vm
mkdir -p "$out"

step "kernel $(uname -r), $(nproc) cpus"
grep -q '^CONFIG_KPROBES=y' "/boot/config-$(uname -r)" && echo "CONFIG_KPROBES=y"

# The project runs from a local copy: imports over 9p under software
# emulation are slow, and the tests may write next to their files.
cp -a "$share/src" /root/tcplab
cd /root/tcplab || exit 1
step "installing tcplab from the working tree (offline, dependencies already in the image)"
pip install -q --no-index --no-deps --no-build-isolation -e . 2>&1 | tail -n 5

step "kprobe self-check: a BCC kprobe on tcp_set_state sees a loopback connection"
python scripts/kernels/kprobe_check.py 2>&1 | tee "$out/kprobe-check.log"
echo "${PIPESTATUS[0]}" >"$out/kprobe-check.rc"

step "tcplab doctor"
tcplab doctor 2>&1 | tee "$out/doctor.log"
echo "${PIPESTATUS[0]}" >"$out/doctor.rc"

mapfile -t args <"$share/tests.args"
while read -r mode; do
    [ -n "$mode" ] || continue
    step "pytest with TCPLAB_ATTACH=$mode: ${args[*]}"
    TCPLAB_ATTACH=$mode TCPLAB_REQUIRE_BPF=1 \
        python -m pytest -ra -p no:cacheprovider "${args[@]}" 2>&1 | tee "$out/pytest-$mode.log"
    echo "${PIPESTATUS[0]}" >"$out/pytest-$mode.rc"
done <"$share/modes"

echo done >"$out/done"
step "finished"
