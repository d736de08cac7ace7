#!/bin/sh
# /init of the stemforge deploy ramdisk (busybox sh, PID 1).
#
# Kernel arguments: sf.api=<base>/v1/nodes/<node> (the provisioning API of this node), sf.token=<job token> (sent
# as X-Stemforge-Token on every request; never printed), optional sf.debug=1 (keep a shell on ttyS0 on failure) and
# sf.bench=<rounds> (benchmark mode, see deploy.sh).
#
# Mounts the kernel filesystems, loads the modules in /etc/modules.load, leases an address with udhcpc on the first
# NIC that reaches the API, fetches the instructions (GET $sf.api/instructions: one shell assignment per line, each
# validated before it is sourced), reports stage "booted", heartbeats every SF_HEARTBEAT_S seconds in the
# background and runs the mode: deploy (deploy.sh), clean (clean.sh) or inspect (inspect.sh).  Any failure is
# reported as a "result" event with ok=false naming the stage, and the ramdisk stays up (the provider powers the
# server off).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
umask 077

/bin/busybox mkdir -p /proc /sys /dev /run /tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
exec </dev/null >/dev/console 2>&1

. /sf/lib.sh

log "booting (kernel $(uname -r))"
kver=$(uname -r)
while read -r m; do
    [ -n "$m" ] || continue
    name=${m##*/}
    name=$(echo "${name%.ko}" | tr - _)
    [ -d "/sys/module/$name" ] && continue
    insmod "/lib/modules/$kver/$m" 2>/dev/null
done </etc/modules.load
ip link set lo up

SF_API=
SF_TOKEN=
SF_DEBUG=
SF_BENCH=0
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        sf.api=*) SF_API=${arg#sf.api=} ;;
        sf.token=*) SF_TOKEN=${arg#sf.token=} ;;
        sf.debug=*) SF_DEBUG=${arg#sf.debug=} ;;
        sf.bench=*) SF_BENCH=${arg#sf.bench=} ;;
    esac
done
SF_API=${SF_API%/}

early_fail() {
    log "FAILED before reporting was possible: $1"
    [ "$SF_DEBUG" = 1 ] && setsid cttyhack sh
    stay_up
}

[ -n "$SF_API" ] || early_fail "no sf.api= on the kernel command line"
[ -n "$SF_TOKEN" ] || early_fail "no sf.token= on the kernel command line"
case "$SF_API" in
    http://*) ;;
    *) early_fail "sf.api must be an http:// URL, not '$SF_API'" ;;
esac
case "$SF_BENCH" in '' | *[!0-9]*) SF_BENCH=0 ;; esac

# ---------------------------------------------------------------- network + instructions
IFACE=
ifaces() {
    local a n
    for a in /sys/class/net/*; do
        n=${a##*/}
        [ "$n" = lo ] && continue
        [ -e "$a/device" ] || continue
        echo "$n"
    done
}

# Instructions are the network probe: the first NIC whose lease lets us GET them wins.
net_up() {
    local round i
    round=0
    while [ "$round" -lt 6 ]; do
        for i in $(ifaces); do
            ip link set "$i" up
            if udhcpc -i "$i" -f -q -n -t 5 -T 2 -s /sf/udhcpc.sh >"$R/udhcpc-$i.log" 2>&1; then
                if fetch "$SF_API/instructions" "$R/instructions"; then
                    IFACE=$i
                    return 0
                fi
                log "lease on $i but no instructions: $ERR"
                case "$ERR" in
                    *" 4"[0-9][0-9]*) return 1 ;;  # 401/404: retrying cannot help
                esac
            else
                log "no DHCP lease on $i"
            fi
        done
        round=$((round + 1))
        sleep 2
    done
    [ -n "$ERR" ] || ERR="no DHCP lease on any of: $(ifaces | tr '\n' ' ')"
    return 1
}

[ -n "$(ifaces)" ] || early_fail "no network interface (modules: $(tr '\n' ' ' </etc/modules.load))"
net_up || early_fail "$ERR"
IP=$(ip -4 -o addr show dev "$IFACE" | awk '{ for (i = 1; i <= NF; i++) if ($i == "inet") { print $(i + 1); exit } }')
MAC=$(cat "/sys/class/net/$IFACE/address")
stage booted "ramdisk up on $IFACE ($MAC, $IP)" \
    "{\"iface\":\"$IFACE\",\"mac\":\"$MAC\",\"ip\":\"${IP%/*}\",\"kernel\":\"$kver\"}"

# Validate before sourcing: SF_NAME='value' lines only (a quote inside a value is written '\'').
bad=$(grep -Ev "^SF_[A-Z0-9_]+='([^']|'\\\\'')*'\$" "$R/instructions" | grep -v '^$' | head -n 1)
[ -z "$bad" ] || fail instructions "malformed instruction line (not SF_NAME='value'): $(printf '%s' "$bad" | cut -c1-80)"
unset SF_MODE SF_IMAGE_URL SF_IMAGE_SHA256 SF_IMAGE_SIZE SF_IMAGE_FORMAT SF_CONFIGDRIVE_URL SF_ROOT_HINTS SF_HEARTBEAT_S SF_ERASE \
    SF_DEPLOY_KIND SF_ROOTFS_URL SF_ROOTFS_OFFSET SF_ROOTFS_SIZE SF_ROOTFS_SHA256 SF_ROOTFS_FSTYPE SF_ROOTFS_FORMAT SF_BOOT_MODE \
    SF_IMAGE_OFFSET
. "$R/instructions"
rm -f "$R/instructions"

SF_HEARTBEAT_S=${SF_HEARTBEAT_S:-10}
case "$SF_HEARTBEAT_S" in '' | *[!0-9]* | 0) fail instructions "SF_HEARTBEAT_S must be a positive integer, not '$SF_HEARTBEAT_S'" ;; esac
start_heartbeat "$SF_HEARTBEAT_S"

case "$SF_MODE" in
    deploy)
        . /sf/deploy.sh
        deploy_main
        ;;
    clean)
        . /sf/clean.sh
        clean_main
        ;;
    inspect)
        . /sf/inspect.sh
        inspect_main
        ;;
    *) fail instructions "SF_MODE must be deploy, clean or inspect, not '$SF_MODE'" ;;
esac
stay_up
