#!/usr/bin/env bash
# `make test-kernels`: the probe test suite on a second kernel, in a VM the
# project builds and boots itself (docs/kernels.md).
#
# Builds once, and caches under $TCPLAB_CACHE/kernels (default
# /var/cache/tcplab), a Debian root filesystem with the kernel's matching
# headers, bcc and tcplab's dependencies; boots the distribution's kernel under
# qemu with the working tree shared over 9p; runs the probe tests once per
# attach mode (TCPLAB_ATTACH=kprobe, then tracepoint); prints the results and
# exits with the first failing status (0 when all passed).
#
#   scripts/test-kernels.sh [--kernel NAME] [--rebuild] [--build-only] [--timeout S] [-- PYTEST_ARGS...]
#     --kernel NAME  scripts/kernels/NAME.conf (default: debian12)
#     --rebuild      rebuild the cached image even though its inputs did not change
#     --build-only   build the image if it is not cached, boot nothing (builds of
#                    different kernels may run side by side, and beside a VM)
#     --timeout S    wall-clock limit for the VM run (default 3600: a hang guard;
#                    a warm run takes 20-30 minutes)
#     PYTEST_ARGS    instead of the probe tests (tests/test_probe*.py) and the
#                    link shaping tests (tests/test_shaping.py: netem's delay is
#                    only testable on a kernel that has it)
# Environment: TCPLAB_VM_CPUS (2), TCPLAB_VM_MEM (2048 MiB), TCPLAB_VM_ACCEL
# (tcg), TCPLAB_CACHE (/var/cache/tcplab), TCPLAB_DEBIAN_MIRROR.
set -euo pipefail

# All in a function, read whole before it runs: bash reads a script as it
# goes, so editing this file during a 20-minute run would change the run.
main() {

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
kdir=$repo/scripts/kernels
started=$SECONDS

die() { printf 'test-kernels: error: %s\n' "$*" >&2; exit 2; }
say() { printf 'test-kernels: %s\n' "$*"; }

kernel=debian12 rebuild=0 build_only=0 timeout_s=3600
pytest_args=()
while [ $# -gt 0 ]; do
    case $1 in
        --kernel) [ $# -ge 2 ] || die "--kernel needs a name (one of: $(cd "$kdir" && ls ./*.conf | sed 's|./||; s|\.conf||' | tr '\n' ' '))"
                  kernel=$2; shift 2 ;;
        --rebuild) rebuild=1; shift ;;
        --build-only) build_only=1; shift ;;
        --timeout) [[ ${2:-} =~ ^[0-9]+$ ]] || die "--timeout needs a number of seconds, e.g. --timeout 3600"
                   timeout_s=$2; shift 2 ;;
        --) shift; pytest_args=("$@"); break ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1': see $0 --help" ;;
    esac
done

[[ $kernel =~ ^[A-Za-z0-9_.-]+$ ]] || die "--kernel '$kernel': give the name of a file in $kdir without .conf"
conf=$kdir/$kernel.conf
[ -f "$conf" ] || die "no kernel definition $conf: pick one of $(cd "$kdir" && ls ./*.conf | sed 's|./||; s|\.conf||' | tr '\n' ' ')"
[ "$(id -u)" -eq 0 ] || die "run as root (sudo make test-kernels): building the root filesystem needs debootstrap and chroot"
[ "$(uname -m)" = x86_64 ] || die "only x86_64 hosts are supported (qemu-system-x86_64 boots an amd64 kernel)"

cpus=${TCPLAB_VM_CPUS:-2} mem=${TCPLAB_VM_MEM:-2048}
# KVM hangs on the machine this was written on, so the default is software
# emulation; TCPLAB_VM_ACCEL=kvm is much faster where KVM works.
accel=${TCPLAB_VM_ACCEL:-tcg}
[[ $cpus =~ ^[1-9][0-9]*$ ]] || die "TCPLAB_VM_CPUS=$cpus: give a number of CPUs, e.g. 2"
[[ $mem =~ ^[1-9][0-9]*$ ]] || die "TCPLAB_VM_MEM=$mem: give MiB, e.g. 2048"
[[ $accel =~ ^(tcg|kvm)$ ]] || die "TCPLAB_VM_ACCEL=$accel: use tcg or kvm"
cache=${TCPLAB_CACHE:-/var/cache/tcplab}/kernels

# --- what the run needs: the probe tests ---------------------------------------
# Test paths are relative to the repository root (the guest runs from there).
if [ ${#pytest_args[@]} -eq 0 ]; then
    mapfile -t pytest_args < <(cd "$repo" && ls tests/test_probe*.py tests/test_shaping.py 2>/dev/null)
    [ ${#pytest_args[@]} -gt 0 ] ||
        die "no probe tests (tests/test_probe*.py) in $repo: pass the tests to run after --, e.g. $0 -- tests/test_x.py"
fi
modes=(kprobe tracepoint)

# --- host tools, installed when missing so a fresh machine works -------------
need=()
for pair in qemu-system-x86_64:qemu-system-x86 debootstrap:debootstrap mkfs.ext4:e2fsprogs \
            cpio:cpio modprobe:kmod gzip:gzip flock:util-linux timeout:coreutils; do
    command -v "${pair%%:*}" >/dev/null || [ -x "/usr/sbin/${pair%%:*}" ] || need+=("${pair#*:}")
done
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || need+=(debian-archive-keyring)
if [ ${#need[@]} -gt 0 ]; then
    command -v apt-get >/dev/null || die "missing ${need[*]} and no apt-get: install them with your package manager"
    say "installing ${need[*]}"
    # Another apt may be running (provision, the other kernel's build): wait for its lock.
    # shellcheck source=apt.sh
    . "$repo/scripts/apt.sh"
    { apt_get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt_get install -y -qq --no-install-recommends "${need[@]}"; } >/dev/null ||
        die "apt-get could not install ${need[*]}: install them by hand and retry"
fi
export PATH=$PATH:/usr/sbin:/sbin

mkdir -p "$cache"
# --- the cached image, keyed by everything it is built from -------------------
# The project's dependencies (not its code: that is shared at each run) are
# part of the key, so a changed pyproject dependency list rebuilds the venv.
deps=$(mktemp)
trap 'rm -f "$deps"' EXIT
/usr/bin/python3 - "$repo/pyproject.toml" >"$deps" <<'EOF' || die "cannot read the dependencies from pyproject.toml"
import sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))
reqs = p["build-system"]["requires"] + p["project"]["dependencies"]
reqs += p["project"].get("optional-dependencies", {}).get("test", [])
print("\n".join(reqs))
EOF
key=$(cat "$conf" "$kdir/build-image.sh" "$kdir/initrd-init.sh" "$deps" | sha256sum | cut -c1-16)
image=$cache/$kernel-$key
# One build of a kernel at a time; builds of different kernels, and a VM, may
# run beside it (a build is mostly network and disk).
exec 8>"$cache/.build-$kernel.lock"
if ! flock -n 8; then
    say "another run is building the $kernel image ($cache/.build-$kernel.lock); waiting for it"
    flock 8
fi
if [ "$rebuild" -eq 1 ] || [ ! -f "$image/rootfs.ext4" ]; then
    build_start=$SECONDS
    say "building the $kernel image (3-4 minutes, network needed) into $image"
    rm -rf "$image.new"
    bash "$kdir/build-image.sh" "$conf" "$deps" "$image.new"
    rm -rf "$image"
    mv "$image.new" "$image"
    # Images of older keys for this kernel are dead weight (about 2 GiB each).
    for old in "$cache/$kernel"-*; do
        [ "$old" = "$image" ] || rm -rf "$old"
    done
    say "image built in $((SECONDS - build_start)) s"
else
    say "cached image $image"
fi
exec 8>&-
release=$(sed -n 's/^kernel_release=//p' "$image/manifest")
[ "$build_only" -eq 0 ] || exit 0

# --- one VM at a time on this machine ------------------------------------------
exec 9>"$cache/.lock"
if ! flock -n 9; then
    say "another test-kernels run holds $cache/.lock; waiting for it"
    flock 9
fi

# --- the share: the working tree, what to run, where results go ----------------
stage=$(mktemp -d /tmp/tcplab-vm.XXXXXX)
trap 'rm -f "$deps"; rm -rf "$stage"' EXIT
mkdir -p "$stage/out"
# Tracked and untracked-but-not-ignored files: what a commit of this tree would
# hold, without the host's venv and caches. One tar file, because many small
# reads over 9p are slow under emulation.
if git -C "$repo" rev-parse --git-dir >/dev/null 2>&1; then
    (cd "$repo" && git ls-files -z -co --exclude-standard -- . ':!:.vagrant' |
        tar --null -T - --ignore-failed-read -cf "$stage/src.tar" 2>/dev/null)
else
    tar -C "$repo" --exclude=.venv --exclude=.git --exclude=.vagrant --exclude=runs \
        --exclude=__pycache__ -cf "$stage/src.tar" .
fi
install -m 755 "$kdir/guest.sh" "$stage/guest.sh"
printf '%s\n' "${pytest_args[@]}" >"$stage/tests.args"
printf '%s\n' "${modes[@]}" >"$stage/modes"

# --- boot ------------------------------------------------------------------------
logs=$cache/last-run
rm -rf "$logs"
say "booting $release ($accel, $cpus cpus, ${mem} MiB); modes: ${modes[*]}; tests: ${pytest_args[*]}"
boot_start=$SECONDS
vm_rc=0
# The root image is opened with snapshot=on: the VM's writes go to a temporary
# overlay, so the cached image stays pristine for the next run.
nice -n 10 timeout -k 10 "$timeout_s" qemu-system-x86_64 \
    -accel "$accel" -cpu max -smp "$cpus" -m "$mem" \
    -nodefaults -no-user-config -display none -no-reboot \
    -serial stdio -monitor none \
    -kernel "$image/vmlinuz" -initrd "$image/initrd.gz" \
    -append "console=ttyS0 panic=-1 quiet loglevel=3" \
    -drive "file=$image/rootfs.ext4,format=raw,if=virtio,snapshot=on" \
    -virtfs "local,path=$stage,mount_tag=tcplab,security_model=none,id=tcplab" \
    </dev/null 2>&1 | tee "$stage/out/console.log" || vm_rc=$?
vm_s=$((SECONDS - boot_start))
cp -r "$stage/out" "$logs"

# --- results ------------------------------------------------------------------------
echo
say "===== results from kernel $release (VM ran ${vm_s} s, total $((SECONDS - started)) s) ====="
if [ ! -f "$logs/done" ]; then
    [ "$vm_rc" -eq 124 ] && die "the VM did not finish within ${timeout_s} s: see $logs/console.log (raise --timeout if it was only slow)"
    die "the VM stopped before finishing (qemu status $vm_rc): see $logs/console.log"
fi
status=0
rc_of() { cat "$logs/$1.rc" 2>/dev/null || echo 1; }
for mode in "${modes[@]}"; do
    # doctor: its kprobe line, its real attach (self-check) and the plan.
    say "TCPLAB_ATTACH=$mode tcplab doctor: exit $(rc_of "doctor-$mode")"
    { grep -E '^\[..\] (kprobes|self-check):|^\[(!!|--)\]|^ +fix:' "$logs/doctor-$mode.log" || true; } | sed 's/^/    /'
    sed -n '/^attach plan:/,$p' "$logs/doctor-$mode.log" | sed 's/^/    /'
    rc=$(rc_of "doctor-$mode")
    [ "$rc" -eq 0 ] || [ "$status" -ne 0 ] || status=$rc
    say "TCPLAB_ATTACH=$mode pytest: exit $(rc_of "pytest-$mode")"
    # -ra's short summary (failures, errors, skips) and the final count line.
    if grep -q 'short test summary info' "$logs/pytest-$mode.log"; then
        sed -n '/short test summary info/,$p' "$logs/pytest-$mode.log" | sed 's/^/    /'
    else
        tail -n 1 "$logs/pytest-$mode.log" | sed 's/^/    /'
    fi
    rc=$(rc_of "pytest-$mode")
    [ "$rc" -eq 0 ] || [ "$status" -ne 0 ] || status=$rc
done
say "logs in $logs"
[ "$status" -eq 0 ] && say "PASSED on $release" || say "FAILED on $release (exit $status)"
exit "$status"
}

main "$@"
