#!/bin/busybox sh
# /init of the test VM's initramfs (built by build-image.sh): load the modules
# listed in /modules.list in order, mount the root disk and the 9p share that
# holds the project, then run the project's guest script as PID 1.
# Any failure powers the VM off at once so the host reports it instead of
# waiting for its time limit.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

fail() {
    echo "tcplab-initrd: error: $*"
    echo o >/proc/sysrq-trigger
    sleep 30
}

while read -r ko; do
    insmod "/modules/$ko" || fail "insmod $ko failed"
done </modules.list

# virtio_blk probes asynchronously: wait for the disk rather than race it.
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
[ -b /dev/vda ] || fail "no /dev/vda: qemu must attach the root image as a virtio disk"
mount -t ext4 -o rw /dev/vda /newroot || fail "cannot mount /dev/vda (ext4)"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 tcplab /newroot/mnt/tcplab ||
    fail "cannot mount the 9p share 'tcplab': qemu must export it with -virtfs"
[ -x /newroot/mnt/tcplab/guest.sh ] || fail "no guest.sh in the 9p share"

mount --move /dev /newroot/dev
umount /proc /sys
exec switch_root /newroot /mnt/tcplab/guest.sh
