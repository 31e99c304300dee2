#!/bin/bash
# PID 1 of the test VM (started by the initramfs from the 9p share that
# test-kernels.sh prepared):
#   /mnt/tcplab/src.tar    the working tree (one file: many small reads over
#                          9p under emulation take tens of seconds)
#   /mnt/tcplab/tests.args the pytest arguments, one per line
#   /mnt/tcplab/modes      the attach modes to run, one per line
#   /mnt/tcplab/out/       results for the host: doctor-<mode>.log and .rc,
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

# Elapsed seconds since boot on each step: under emulation, where time goes.
step() { printf '\n=== tcplab-vm [%ss]: %s\n' "$(cut -d. -f1 /proc/uptime)" "$*"; }

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
mkdir -p /root/tcplab && tar -C /root/tcplab -xf "$share/src.tar"
cd /root/tcplab || exit 1
mapfile -t args <"$share/tests.args"
mapfile -t modes <"$share/modes"
step "installing tcplab from the working tree (offline, dependencies already in the image)"
pip install -q --no-index --no-deps --no-build-isolation -e . 2>&1 | tail -n 5

# Bytecode once, in parallel, rather than compiled again by every probe and
# CLI process the tests start (PYTHONDONTWRITEBYTECODE keeps them from
# writing it): seconds per process under emulation.
python -m compileall -q -j 0 actors bus correlator lab probes reports orchestrator.py tests >/dev/null

# One attach mode's pass: doctor, then pytest, each with its log and exit code
# in the share.
run_mode() {
    local mode=$1 a
    # doctor loads and attaches tcp_state in this mode and prints the attach
    # plan: proof that the mode really works on this kernel, before the tests.
    TCPLAB_ATTACH=$mode tcplab doctor >"$out/doctor-$mode.log" 2>&1
    echo $? >"$out/doctor-$mode.rc"
    # The TCP internals and the link shaping have no kprobe variant: they run
    # the same in either mode, so once (tracepoint mode) is enough, and the
    # kprobe pass stays within CI's time.
    local run_args=()
    for a in "${args[@]}"; do
        case "$mode:$a" in
            kprobe:tests/test_probe_internals_*.py|kprobe:tests/test_shaping.py) ;;
            *) run_args+=("$a") ;;
        esac
    done
    if [ ${#run_args[@]} -eq 0 ]; then
        echo "no test of $mode mode among: ${args[*]}" >"$out/pytest-$mode.log"
        echo 0 >"$out/pytest-$mode.rc"
        return
    fi
    step "pytest with TCPLAB_ATTACH=$mode: ${run_args[*]}"
    # Software emulation runs everything about 10x slower (clang compiling BPF
    # against kernel headers most): the tests scale their deadlines by
    # TCPLAB_TEST_SLOW. pytest-timeout's 300 s per test (pyproject) becomes
    # 900 s, not 3000: a hung test must fail by itself well inside the host's
    # 3600 s guard on the whole VM, or no result of either mode comes back.
    TCPLAB_ATTACH=$mode TCPLAB_REQUIRE_BPF=1 TCPLAB_TEST_SLOW=10 \
        python -m pytest -ra --durations=10 -p no:cacheprovider --timeout=900 "${run_args[@]}" \
        >"$out/pytest-$mode.log" 2>&1
    echo $? >"$out/pytest-$mode.rc"
    step "TCPLAB_ATTACH=$mode pass finished: $(tail -n 1 "$out/pytest-$mode.log")"
}

# The passes run side by side: each is mostly one process at a time (clang
# compiling a program, a test waiting on its traffic), so run one after the
# other they left the second CPU idle for half of the VM's time. The tests
# allow it: they pick free ports, make their own namespaces and count only the
# programs and sockets they made themselves, as they must on a shared host.
step "doctor and pytest for modes ${modes[*]}, side by side"
pids=()
for mode in "${modes[@]}"; do
    run_mode "$mode" &
    pids+=($!)
done
wait "${pids[@]}"
for mode in "${modes[@]}"; do
    step "TCPLAB_ATTACH=$mode: doctor (exit $(cat "$out/doctor-$mode.rc"))"
    cat "$out/doctor-$mode.log"
    step "TCPLAB_ATTACH=$mode: pytest (exit $(cat "$out/pytest-$mode.rc"))"
    cat "$out/pytest-$mode.log"
done

echo done >"$out/done"
step "finished"
