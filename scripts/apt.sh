# Sourced by scripts/provision.sh and scripts/test-kernels.sh: apt-get that
# waits for apt's locks instead of failing. .ci/run provisions (`make test`)
# while it builds the VM images (one test-kernels.sh per kernel, each
# installing qemu and debootstrap when missing): on a fresh machine they all
# want apt at once.
APT_LOCK_WAIT_S=600
# install waits for dpkg's frontend lock (DPkg::Lock::Timeout), but apt-get
# update ignores that option for its lists lock (apt 2.6 fails at once), so an
# update is tried again while that lock is what stops it.
apt_get() {
    if [ "${1:-}" != update ]; then
        apt-get -o DPkg::Lock::Timeout="$APT_LOCK_WAIT_S" "$@"
        return
    fi
    local waited=0 out
    until out=$(apt-get "$@" 2>&1); do
        if ! grep -q 'Could not get lock' <<<"$out" || [ "$waited" -ge "$APT_LOCK_WAIT_S" ]; then
            printf '%s\n' "$out" >&2
            return 1
        fi
        sleep 5
        waited=$((waited + 5))
    done
    [ -z "$out" ] || printf '%s\n' "$out"
}
