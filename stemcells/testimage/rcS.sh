#!/bin/sh
# /etc/init.d/rcS of the stemforge test image (busybox init's sysinit step).
#
# Mounts the kernel filesystems, loads the modules listed in /etc/stemforge/modules.load
# (paths relative to /lib/modules/<release>, dependency order; already loaded ones are
# skipped), lets the CD tray stay unlocked so the host can swap the config-drive media at
# any time, brings up loopback and starts acpid (power button -> poweroff).  The agent itself is started by /etc/inittab.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin

mounted() {
    grep -q "^[^ ]* $1 " /proc/mounts 2>/dev/null
}

[ -r /proc/mounts ] || mount -t proc proc /proc
mounted /sys || mount -t sysfs sysfs /sys
mounted /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mounted /dev/pts || mount -t devpts devpts /dev/pts
mounted /run || mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mounted /tmp || mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
mkdir -p /run/stemforge
exec >>/run/stemforge/rcS.log 2>&1
mount -o remount,rw /

kver=$(uname -r)
while read -r m; do
    [ -n "$m" ] || continue
    name=${m##*/}
    name=$(echo "${name%.ko}" | tr - _)
    [ -d "/sys/module/$name" ] && continue
    insmod "/lib/modules/$kver/$m"
done < /etc/stemforge/modules.load

# Never lock the CD tray: the CPI swaps the config-drive media while the VM runs.
[ -w /proc/sys/dev/cdrom/lock ] && echo 0 > /proc/sys/dev/cdrom/lock

hostname -F /etc/hostname
ip link set lo up

# ACPI power button (libvirt's shutdown, QEMU's system_powerdown) -> clean poweroff.
acpid -c /etc/acpi -l /run/stemforge/acpid.log -p /run/acpid.pid
exit 0
