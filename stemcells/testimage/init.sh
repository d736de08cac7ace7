#!/bin/sh
# /init of the stemforge test image's initramfs (busybox sh).
#
# Loads the storage/filesystem modules listed in /etc/modules.load (paths relative to
# /lib/modules/<release>, in dependency order), finds the root filesystem named by the
# kernel's root= argument (LABEL=..., UUID=... or a /dev path; default LABEL=sf-root),
# mounts it read-write and switch_roots to its /sbin/init.  On failure it reports a
# STEMFORGE-AGENT error line on the console and powers the machine off.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

/bin/busybox mkdir -p /proc /sys /dev /newroot /run
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null

fail() {
    msg=$(printf '%s' "$1" | tr -d '"\\\000-\037')
    echo "STEMFORGE-AGENT {\"event\":\"error\",\"step\":\"initramfs\",\"message\":\"$msg\"}" > /dev/console
    sleep 2
    poweroff -f
    exit 1
}

kver=$(uname -r)
while read -r m; do
    [ -n "$m" ] || continue
    name=${m##*/}
    name=$(echo "${name%.ko}" | tr - _)
    [ -d "/sys/module/$name" ] && continue
    insmod "/lib/modules/$kver/$m" 2>/dev/null
done < /etc/modules.load

root=LABEL=sf-root
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        root=*) root=${arg#root=} ;;
    esac
done

dev=
i=0
while [ $i -lt 150 ]; do
    case "$root" in
        /dev/*) [ -b "$root" ] && dev=$root ;;
        *) dev=$(findfs "$root" 2>/dev/null) ;;
    esac
    [ -n "$dev" ] && break
    sleep 0.1
    i=$((i + 1))
done
[ -n "$dev" ] || fail "root filesystem $root not found"

mount -t ext4 -o rw "$dev" /newroot 2>/dev/null || mount -o rw "$dev" /newroot \
    || fail "cannot mount root $dev"
[ -x /newroot/sbin/init ] || fail "no /sbin/init on $dev"

mount --move /dev /newroot/dev 2>/dev/null
umount /sys /proc 2>/dev/null
exec switch_root /newroot /sbin/init
fail "switch_root failed"
