#!/bin/sh
# stemforge test agent (busybox sh + awk), started and respawned by busybox init.
#
# Emulates what bosh-agent does with a ConfigDrive settings source, and reports every step
# on the serial console as single lines "STEMFORGE-AGENT <compact JSON object>":
#
#   settings      settings read and parsed: seq, source (config-drive|cache), device, path,
#                 agent_id, hostname, vm_name, settings_sha256 (of the file as read),
#                 mbus_scheme, ntp_count, blobstore_provider, env_keys, networks,
#                 persistent_disks, has_public_key.  Never a secret value.
#   network       one per settings network (at boot only): name, type, iface, mac, ip,
#                 prefix, gateway, default_route, dhcp, configured [, reason].
#   disk          kind (system|ephemeral|persistent), cid, hint, device, serial (the device's
#                 virtio serial), marker (first line of stemforge-marker in the disk's filesystem,
#                 written by tests when they create a disk), resolved_by (id|mapped|identity), id_error
#                 (why the ID resolver gave way to the mapped one),
#                 mounted, formatted, marker_existed, size_mib.
#   disk-pending  a listed disk that does not resolve (yet), reason = the resolver's error; retried
#                 on every poll.
#   disk-removed  kind, cid, device, mounted, reason (settings|device-gone).
#   applied       end of processing one settings document: seq, settings_sha256.
#   ready         end of the boot pass: uptime_s, boot, device_path_resolution, settings_sha256.
#   error         step, message (never secret values).
#   phone-home    ok, attempts, url, status: the POST to meta.phone_home_url (see below).
#
# Flow: find the config drive (filesystem label config-2 / CONFIG-2 on any block device, in
# practice the SATA CD-ROM /dev/sr0), mount it read-only, read ec2/latest/user-data
# (fallback openstack/latest/user_data), flatten it with json.awk, set the hostname to
# agent_id, configure the networks whose MAC is present, resolve and mount the disks
# (exactly as bosh-agent resolves them for the DevicePathResolutionType and DiskIDTransform* of
# /var/vcap/bosh/agent.json - see diskresolve.sh and README.md; persistent disks: formatted when
# blank, the first at /var/vcap/store, others at /var/vcap/store-<n>), then every POLL seconds re-read the drive: when the sha256 of
# user-data changes, apply the new disks.persistent (mount new ones, unmount removed ones).
# Settings are cached in /var/vcap/bosh/settings.json and used when no drive is found.
# Everything it sends on the network is DHCP for dynamic networks and, only when the config drive's
# openstack/latest/meta_data.json has meta.phone_home_url and meta.phone_home_token (bare metal), one phone-home
# per boot after "ready": POST {"agent_id","hostname","networks" (the network events),"macs","configdrive_sha256"
# (of the ISO 9660 volume as it sits on the device: volume space size x block size bytes),"settings_sha256",
# "boot"} with header X-Stemforge-Token, retried every 2 s for at most PHONE_HOME_TRIES attempts.

export PATH=/sbin:/bin:/usr/sbin:/usr/bin
umask 022

SF=/stemforge
RUN=/run/stemforge
CDMNT=$RUN/config-drive
FLAT=$RUN/settings.flat
CACHE=/var/vcap/bosh/settings.json
STATE=/var/lib/stemforge
POLL=${STEMFORGE_POLL:-2}
PHONE_HOME_TRIES=${STEMFORGE_PHONE_HOME_TRIES:-30}
DRIVE_WAIT=${STEMFORGE_DRIVE_WAIT:-40}
AGENT_JSON=/var/vcap/bosh/agent.json

# bosh-agent's device path resolution (ID resolver, mapped resolver), shared with the host-side tests.
. "$SF/diskresolve.sh"

mkdir -p "$RUN" "$CDMNT" "$RUN/disks/persistent" "$RUN/disks/ephemeral" "$RUN/pending" "$RUN/failed" "$STATE"
exec </dev/null >>"$RUN/agent.log" 2>&1

OUT=/dev/ttyS0
if ! { exec 3>>"$OUT"; } 2>/dev/null; then
    OUT=/dev/console
    exec 3>>"$OUT"
fi

# Start on a fresh line: init and the kernel may have left a partial line on the console.
printf '\r\n' >&3

CUR_SHA=
BAD_SHA=
SEQ=0
BOOT_DONE=
SRC_DEV=
SRC_PATH=
HAS_KEY=false

# ---------------------------------------------------------------- output helpers
emit() {
    printf 'STEMFORGE-AGENT %s\n' "$1" >&3
    printf '%s %s\n' "$(uptime_s)" "$1" >>"$RUN/events.log"
}

uptime_s() {
    cut -d' ' -f1 /proc/uptime
}

# jesc STRING: JSON-escape an arbitrary string (control characters are dropped).
jesc() {
    printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' | tr -d '\000-\037'
}

# err STEP MESSAGE: report an error event.
err() {
    emit "{\"event\":\"error\",\"step\":\"$(jesc "$1")\",\"message\":\"$(jesc "$2")\"}"
}

# json_list: stdin lines (already JSON-escaped content) -> JSON array of strings.
json_list() {
    awk 'BEGIN { printf "[" } { printf "%s\"%s\"", (NR > 1 ? "," : ""), $0 } END { printf "]" }'
}

# keydec: decode the %2F / %25 / lone-% escaping json.awk applies to keys (stdin -> stdout).
keydec() {
    sed -e 's/^%$//' -e 's/%2F/\//g' -e 's/%25/%/g'
}

bool() {
    if [ "$1" = true ]; then echo true; else echo false; fi
}

# ---------------------------------------------------------------- settings lookups
# jget PATH: value of the node at PATH (last one wins); status 1 when absent.
jget() {
    P="$1" awk -F'\t' '$1 == ENVIRON["P"] { v = $3; f = 1 } END { if (f) print v; exit !f }' "$FLAT"
}

# jtype PATH: s|n|b|z|o|a, status 1 when absent.
jtype() {
    P="$1" awk -F'\t' '$1 == ENVIRON["P"] { v = $2; f = 1 } END { if (f) print v; exit !f }' "$FLAT"
}

# jkeys PATH: the direct children's keys (escaped form) of the object/array at PATH.
jkeys() {
    P="$1" awk -F'\t' '
        BEGIN { pre = (ENVIRON["P"] == "") ? "" : ENVIRON["P"] "/" }
        index($1, pre) == 1 {
            r = substr($1, length(pre) + 1)
            if (r != "" && index(r, "/") == 0 && !(r in seen)) { seen[r] = 1; print r }
        }' "$FLAT"
}

# jhas_value PATH VALUE: true when an element of the array at PATH equals VALUE.
jhas_value() {
    P="$1" V="$2" awk -F'\t' '
        BEGIN { pre = ENVIRON["P"] "/" }
        index($1, pre) == 1 && index(substr($1, length(pre) + 1), "/") == 0 && $2 == "s" && $3 == ENVIRON["V"] { f = 1 }
        END { exit !f }' "$FLAT"
}

# flatten FILE: parse the settings into $FLAT.tmp; on failure sets ERR and returns 1.
flatten() {
    ERR=
    if ! awk -f "$SF/json.awk" "$1" >"$FLAT.tmp" 2>>"$RUN/agent.log"; then
        ERR="invalid JSON: $(grep '^!error' "$FLAT.tmp" | head -n 1 | cut -f2- | tr '\t' ' ')"
        return 1
    fi
    if ! awk -F'\t' '$1 == "" && $2 == "o" { f = 1 } END { exit !f }' "$FLAT.tmp"; then
        ERR="settings are not a JSON object"
        return 1
    fi
    if ! P=agent_id awk -F'\t' '$1 == ENVIRON["P"] && $2 == "s" && $3 != "" { f = 1 } END { exit !f }' "$FLAT.tmp"; then
        ERR="settings have no agent_id"
        return 1
    fi
    return 0
}

# ---------------------------------------------------------------- config drive
probe_iso_label() {
    local s n d pvd lbl
    for s in /sys/class/block/*; do
        n=${s##*/}
        d=/dev/$n
        [ -b "$d" ] || continue
        pvd=$(dd if="$d" bs=2048 skip=16 count=1 2>/dev/null | dd bs=1 count=72 2>/dev/null | tr -d '\000')
        case "$pvd" in
            ?CD001*) ;;
            *) continue ;;
        esac
        lbl=$(dd if="$d" bs=2048 skip=16 count=1 2>/dev/null | dd bs=1 skip=40 count=32 2>/dev/null | tr -d ' \000')
        case "$lbl" in
            config-2 | CONFIG-2)
                echo "$d"
                return 0
                ;;
        esac
    done
    return 1
}

find_config_drive() {
    findfs LABEL=config-2 2>/dev/null || findfs LABEL=CONFIG-2 2>/dev/null || probe_iso_label
}

# read_config_drive: copy the settings file of the config drive to $RUN/user-data.new.
read_config_drive() {
    local dev rel c rc
    dev=$(find_config_drive) || return 1
    umount "$CDMNT" 2>/dev/null
    mount -t iso9660 -o ro "$dev" "$CDMNT" 2>/dev/null || mount -o ro "$dev" "$CDMNT" 2>/dev/null || return 1
    rel=
    for c in ec2/latest/user-data openstack/latest/user_data; do
        if [ -f "$CDMNT/$c" ]; then
            rel=$c
            break
        fi
    done
    rc=1
    if [ -n "$rel" ] && cp "$CDMNT/$rel" "$RUN/user-data.new" 2>/dev/null; then
        rc=0
        SRC_DEV=$dev
        SRC_PATH=$rel
        HAS_KEY=false
        grep -q openssh-key "$CDMNT/ec2/latest/meta-data.json" 2>/dev/null && HAS_KEY=true
        if cp "$CDMNT/openstack/latest/meta_data.json" "$RUN/meta_data.json.new" 2>/dev/null; then
            mv "$RUN/meta_data.json.new" "$RUN/meta_data.json"
        else
            rm -f "$RUN/meta_data.json"
        fi
    fi
    umount "$CDMNT" 2>/dev/null
    return $rc
}

# ---------------------------------------------------------------- networks
mask2prefix() {
    case "$1" in
        *.*) echo "$1" | awk -F. '{ n = 0; for (i = 1; i <= 4; i++) { x = $i + 0; while (x > 0) { n += x % 2; x = int(x / 2) } } print n }' ;;
        '') echo 24 ;;
        *) echo "$1" ;;
    esac
}

iface_by_mac() {
    local a n
    for a in /sys/class/net/*/address; do
        [ -f "$a" ] || continue
        if [ "$(cat "$a")" = "$1" ]; then
            n=${a%/address}
            echo "${n##*/}"
            return 0
        fi
    done
    return 1
}

only_iface() {
    local a n
    set --
    for a in /sys/class/net/*; do
        n=${a##*/}
        [ "$n" = lo ] && continue
        set -- "$@" "$n"
    done
    [ $# -eq 1 ] && echo "$1"
}

configure_network() {
    local name p ntype nip nmask ngw nprefix nmac dhcp defgw defdns ename head iface i ok reason got dnsl d line
    name=$1
    p=networks/$name
    ntype=$(jget "$p/type") || ntype=manual
    nip=$(jget "$p/ip")
    nmask=$(jget "$p/netmask")
    ngw=$(jget "$p/gateway")
    nprefix=$(jget "$p/prefix")
    nmac=$(jget "$p/mac" | tr 'A-F' 'a-f')
    dhcp=false
    if [ "$ntype" = dynamic ] || [ "$(jget "$p/use_dhcp")" = true ]; then dhcp=true; fi
    defgw=false
    defdns=false
    if jtype "$p/default" >/dev/null; then
        jhas_value "$p/default" gateway && defgw=true
        jhas_value "$p/default" dns && defdns=true
    elif [ "$(wc -l <"$RUN/networks.list")" -eq 1 ]; then
        defgw=true
        defdns=true
    fi
    ename=$(printf '%s' "$name" | keydec)
    head="\"event\":\"network\",\"name\":\"$ename\",\"type\":\"$ntype\",\"mac\":\"$nmac\""
    if [ "$ntype" = vip ]; then
        emit "{$head,\"iface\":null,\"ip\":\"$nip\",\"configured\":false,\"reason\":\"vip networks are not configured on the VM\"}"
        return
    fi
    iface=
    i=0
    while [ $i -lt 20 ]; do
        if [ -n "$nmac" ]; then
            iface=$(iface_by_mac "$nmac") && break
        else
            iface=$(only_iface) && [ -n "$iface" ] && break
        fi
        sleep 0.5
        i=$((i + 1))
    done
    if [ -z "$iface" ]; then
        emit "{$head,\"iface\":null,\"ip\":\"$nip\",\"configured\":false,\"reason\":\"no interface with this MAC\"}"
        return
    fi
    ok=true
    reason=
    ip link set "$iface" up || { ok=false; reason="cannot bring $iface up"; }
    if $ok && $dhcp; then
        if SF_DEFAULT_ROUTE=$defgw SF_SET_DNS=$defdns udhcpc -i "$iface" -f -q -n -t 4 -T 1 -s "$SF/udhcpc.sh" >>"$RUN/agent.log" 2>&1; then
            got=$(ip -4 -o addr show dev "$iface" | awk '{ for (i = 1; i <= NF; i++) if ($i == "inet") { print $(i + 1); exit } }')
            nip=${got%/*}
            nprefix=${got#*/}
            ngw=$(cat "$RUN/dhcp-$iface" 2>/dev/null | sed -n 's/.*router=\([^ ]*\).*/\1/p')
        else
            ok=false
            reason="no DHCP lease"
        fi
    elif $ok; then
        [ -n "$nprefix" ] || nprefix=$(mask2prefix "$nmask")
        if [ -z "$nip" ]; then
            ok=false
            reason="manual network without ip"
        elif ! ip -4 -o addr show dev "$iface" | grep -q " $nip/"; then
            ip addr add "$nip/$nprefix" dev "$iface" || { ok=false; reason="ip addr add failed"; }
        fi
        if $ok && $defgw && [ -n "$ngw" ]; then
            ip route replace default via "$ngw" dev "$iface" || { ok=false; reason="default route failed"; }
        fi
    fi
    if $ok && $defdns && ! $dhcp; then
        dnsl=$(jkeys "$p/dns" | while read -r k; do jget "$p/dns/$k"; done)
        if [ -n "$dnsl" ]; then
            : >/etc/resolv.conf
            for d in $dnsl; do echo "nameserver $d" >>/etc/resolv.conf; done
        fi
    fi
    case "$nprefix" in '' | *[!0-9]*) nprefix=null ;; esac
    line="{$head,\"iface\":\"$iface\",\"ip\":\"$nip\",\"prefix\":$nprefix,\"gateway\":\"$ngw\",\"default_route\":$defgw,\"dhcp\":$dhcp,\"configured\":$ok"
    [ -n "$reason" ] && line="$line,\"reason\":\"$reason\""
    emit "$line}"
    echo "$line}" >>"$RUN/networks.json"
}

configure_networks() {
    : >"$RUN/networks.json"
    jkeys networks >"$RUN/networks.list"
    while read -r net; do
        configure_network "$net"
    done <"$RUN/networks.list"
}

# ---------------------------------------------------------------- disks
ROOT_DISK=
root_disk() {
    rdev=$(awk '$2 == "/" && $1 ~ /^\/dev\// { d = $1 } END { print d }' /proc/mounts)
    rname=${rdev#/dev/}
    if [ -e "/sys/class/block/$rname/partition" ]; then
        parent=$(readlink -f "/sys/class/block/$rname/..")
        ROOT_DISK=${parent##*/}
    else
        ROOT_DISK=$rname
    fi
}

# resolve_hint PATH ID: resolve the disk hint at settings PATH the way bosh-agent does (diskresolve.sh),
# ID being what bosh-agent takes as the disk's ID (the CID for a persistent disk, "" otherwise).
# Sets HINT (the hint as JSON), DEV, HOW (id|mapped|identity) and, on failure, DR_ERR.
resolve_hint() {
    local hp hpath k v
    hp=$1
    DEV=
    HOW=
    hpath=
    case "$(jtype "$hp")" in
        s)
            hpath=$(jget "$hp")
            HINT="\"$hpath\""
            ;;
        o)
            hpath=$(jget "$hp/path")
            HINT="{"
            for k in path id volume_id lun host_device_id; do
                v=$(jget "$hp/$k") && [ -n "$v" ] && HINT="$HINT\"$k\":\"$v\","
            done
            HINT="${HINT%,}}"
            ;;
        *)
            HINT=null
            DR_ERR="no hint"
            return 1
            ;;
    esac
    dr_resolve "$2" "$hpath" || return 1
    DEV=$DR_DEV
    HOW=$DR_HOW
    return 0
}

serial_of() {
    local n
    n=$(readlink -f "$1" 2>/dev/null) || n=$1
    n=${n#/dev/}
    cat "/sys/class/block/$n/serial" 2>/dev/null
}

# marker_of MOUNTPOINT: first line of the "stemforge-marker" file a disk was created with (tests write it
# into the filesystem before the disk is first attached), JSON-escaped; empty when there is none.
marker_of() {
    [ -f "$1/stemforge-marker" ] || return 0
    jesc "$(head -n 1 "$1/stemforge-marker")"
}

is_blank() {
    n=$(dd if="$1" bs=65536 count=16 2>/dev/null | tr -d '\000' | wc -c)
    [ "$n" -eq 0 ]
}

is_mountpoint_used() {
    M="$1" awk '$2 == ENVIRON["M"] { f = 1 } END { exit !f }' /proc/mounts
}

device_in_use() {
    local f _c _d _m
    for f in "$RUN"/disks/*/*; do
        [ -f "$f" ] || continue
        { read -r _c; read -r _d; read -r _m; } <"$f"
        [ "$_d" = "$1" ] && return 0
    done
    return 1
}

keyhash() {
    printf '%s' "$1" | sha1sum | cut -c1-16
}

# mount_disk KIND CID: resolve, format when blank, mount and report one disk.
mount_disk() {
    local kind cid h hp ecid head name target part formatted mp i marker sectors idarg serial
    kind=$1
    cid=$2
    h=$(keyhash "$kind/$cid")
    [ -f "$RUN/disks/$kind/$h" ] && return 0
    [ -f "$RUN/failed/$h" ] && return 1
    case $kind in
        persistent) hp="disks/persistent/$cid" ;;
        *) hp="disks/$kind" ;;
    esac
    ecid=$(printf '%s' "$cid" | keydec)
    if [ "$kind" = persistent ]; then
        head="\"kind\":\"$kind\",\"cid\":\"$ecid\""
    else
        head="\"kind\":\"$kind\",\"cid\":null"
    fi
    idarg=
    [ "$kind" = persistent ] && idarg=$(printf '%s' "$cid" | keydec)
    if ! resolve_hint "$hp" "$idarg"; then
        if [ ! -f "$RUN/pending/$h" ]; then
            : >"$RUN/pending/$h"
            emit "{\"event\":\"disk-pending\",$head,\"hint\":$HINT,\"reason\":\"$(jesc "$DR_ERR")\"}"
        fi
        return 1
    fi
    name=$(readlink -f "$DEV" 2>/dev/null) || name=$DEV
    name=${name#/dev/}
    if [ "$name" = "$ROOT_DISK" ] || device_in_use "/dev/$name"; then
        if [ ! -f "$RUN/pending/$h" ]; then
            : >"$RUN/pending/$h"
            emit "{\"event\":\"disk-pending\",$head,\"hint\":$HINT,\"device\":\"$DEV\",\"reason\":\"device is the root disk or already in use\"}"
        fi
        return 1
    fi
    rm -f "$RUN/pending/$h"
    target=/dev/$name
    for part in "/sys/class/block/$name/${name}1" "/sys/class/block/$name/${name}p1"; do
        [ -d "$part" ] && target=/dev/${part##*/}
    done
    formatted=false
    if is_blank "$target"; then
        if ! mke2fs -F -L "$kind" "$target" >>"$RUN/agent.log" 2>&1; then
            echo "mke2fs" >"$RUN/failed/$h"
            err "format-disk" "mke2fs failed on $target for $kind disk $ecid"
            return 1
        fi
        formatted=true
    fi
    case $kind in
        persistent)
            mp=/var/vcap/store
            i=2
            while is_mountpoint_used "$mp"; do
                mp=/var/vcap/store-$i
                i=$((i + 1))
            done
            ;;
        ephemeral) mp=/var/vcap/data ;;
    esac
    mkdir -p "$mp"
    if ! mount -t ext4 "$target" "$mp" 2>>"$RUN/agent.log" && ! mount "$target" "$mp" 2>>"$RUN/agent.log"; then
        echo "mount" >"$RUN/failed/$h"
        err "mount-disk" "cannot mount $target at $mp for $kind disk $ecid"
        return 1
    fi
    marker=false
    [ -f "$mp/.stemforge-agent" ] && marker=true
    {
        echo "kind=$kind"
        echo "cid=$ecid"
        echo "device=$target"
        echo "boot=$BOOT"
    } >"$mp/.stemforge-agent"
    sync
    printf '%s\n%s\n%s\n' "$cid" "$target" "$mp" >"$RUN/disks/$kind/$h"
    sectors=$(cat "/sys/class/block/${target#/dev/}/size" 2>/dev/null || echo 0)
    serial=$(jesc "$(serial_of "$DEV")")
    emit "{\"event\":\"disk\",$head,\"hint\":$HINT,\"device\":\"$target\",\"serial\":\"$serial\",\"marker\":\"$(marker_of "$mp")\",\"resolved_by\":\"$HOW\",\"id_error\":\"$(jesc "$DR_ID_ERR")\",\"mounted\":\"$mp\",\"formatted\":$formatted,\"marker_existed\":$marker,\"size_mib\":$((sectors / 2048))}"
    return 0
}

unmount_disk() {
    local f reason cid dev mp kind ecid ok
    f=$1
    reason=$2
    { read -r cid; read -r dev; read -r mp; } <"$f"
    kind=persistent
    ecid=$(printf '%s' "$cid" | keydec)
    ok=true
    umount "$mp" 2>>"$RUN/agent.log" || umount -l "$mp" 2>>"$RUN/agent.log" || ok=false
    rm -f "$f"
    emit "{\"event\":\"disk-removed\",\"kind\":\"$kind\",\"cid\":\"$ecid\",\"device\":\"$dev\",\"mounted\":\"$mp\",\"unmounted\":$ok,\"reason\":\"$reason\"}"
}

report_system_disk() {
    jtype disks/system >/dev/null || return 0
    if resolve_hint disks/system ""; then
        emit "{\"event\":\"disk\",\"kind\":\"system\",\"cid\":null,\"hint\":$HINT,\"device\":\"$DEV\",\"resolved_by\":\"$HOW\",\"mounted\":\"/\"}"
    else
        emit "{\"event\":\"disk\",\"kind\":\"system\",\"cid\":null,\"hint\":$HINT,\"device\":null,\"mounted\":\"/\"}"
    fi
}

# sync_persistent: unmount disks no longer listed or gone, mount listed ones not mounted.
sync_persistent() {
    local f cid dev mp
    jkeys disks/persistent >"$RUN/persistent.list"
    for f in "$RUN"/disks/persistent/*; do
        [ -f "$f" ] || continue
        { read -r cid; read -r dev; read -r mp; } <"$f"
        if ! grep -Fxq -- "$cid" "$RUN/persistent.list"; then
            unmount_disk "$f" settings
        elif [ ! -b "$dev" ]; then
            unmount_disk "$f" device-gone
        fi
    done
    while read -r cid; do
        mount_disk persistent "$cid"
    done <"$RUN/persistent.list"
}

# ---------------------------------------------------------------- settings
# apply_settings SOURCE: parse $RUN/user-data.new and act on it.
apply_settings() {
    local src sha dev path agent_id hn vm_name mbus scheme ntp bs env_keys nets pds
    src=$1
    sha=$(sha256sum "$RUN/user-data.new" | cut -d' ' -f1)
    if ! flatten "$RUN/user-data.new"; then
        BAD_SHA=$sha
        err "parse-settings" "$ERR (settings_sha256 $sha)"
        return 1
    fi
    mv "$FLAT.tmp" "$FLAT"
    cp "$RUN/user-data.new" "$RUN/user-data"
    CUR_SHA=$sha
    BAD_SHA=
    SEQ=$((SEQ + 1))
    rm -f "$RUN"/failed/* "$RUN"/pending/*
    if [ "$src" = config-drive ]; then
        mkdir -p "${CACHE%/*}"
        (umask 077 && cp "$RUN/user-data.new" "$CACHE.tmp" && mv "$CACHE.tmp" "$CACHE")
        dev=$SRC_DEV
        path=$SRC_PATH
    else
        dev=
        path=$CACHE
    fi
    agent_id=$(jget agent_id)
    hostname "$agent_id" 2>>"$RUN/agent.log" && echo "$agent_id" >/etc/hostname
    hn=$(hostname)
    vm_name=$(jget vm/name)
    if mbus=$(jget env/bosh/mbus/urls/0); then :; else mbus=$(jget mbus); fi
    scheme=
    case "$mbus" in
        *://*) scheme=${mbus%%://*} ;;
    esac
    case "$scheme" in
        *[!a-zA-Z0-9+.-]*) scheme=invalid ;;
    esac
    if [ "$(jtype env/bosh/ntp)" = a ]; then ntp=$(jget env/bosh/ntp); else ntp=$(jget ntp) || ntp=0; fi
    case "$ntp" in '' | *[!0-9]*) ntp=0 ;; esac
    bs=$(jget env/bosh/blobstores/0/provider) || bs=$(jget blobstore/provider) || bs=
    env_keys=$(jkeys env | keydec | json_list)
    nets=$(jkeys networks | keydec | json_list)
    pds=$(jkeys disks/persistent | keydec | json_list)
    emit "{\"event\":\"settings\",\"seq\":$SEQ,\"source\":\"$src\",\"device\":\"$dev\",\"path\":\"$path\",\"agent_id\":\"$agent_id\",\"hostname\":\"$(jesc "$hn")\",\"vm_name\":\"$vm_name\",\"settings_sha256\":\"$sha\",\"mbus_scheme\":\"$scheme\",\"ntp_count\":$ntp,\"blobstore_provider\":\"$bs\",\"env_keys\":$env_keys,\"networks\":$nets,\"persistent_disks\":$pds,\"has_public_key\":$(bool "$HAS_KEY")}"
    if [ -z "$BOOT_DONE" ]; then
        configure_networks
        report_system_disk
        # bosh-agent: no ephemeral disk path (absent or null) -> no ephemeral disk to resolve
        if [ "$(jtype disks/ephemeral)" = s ] || [ "$(jtype disks/ephemeral)" = o ]; then
            mount_disk ephemeral ""
        fi
        BOOT_DONE=1
    fi
    sync_persistent
    emit "{\"event\":\"applied\",\"seq\":$SEQ,\"settings_sha256\":\"$sha\"}"
    return 0
}

poll_once() {
    local sha
    if read_config_drive; then
        sha=$(sha256sum "$RUN/user-data.new" | cut -d' ' -f1)
        if [ "$sha" != "$CUR_SHA" ] && [ "$sha" != "$BAD_SHA" ]; then
            apply_settings config-drive
            return
        fi
    fi
    [ -n "$CUR_SHA" ] && sync_persistent
}

# ---------------------------------------------------------------- phone-home (bare metal)
# iso_sha256 DEV: sha256 of the ISO 9660 volume on DEV (volume space size x logical block size bytes).
iso_sha256() {
    local blocks bsz
    blocks=$(dd if="$1" bs=2048 skip=16 count=1 2>/dev/null | dd bs=1 skip=80 count=4 2>/dev/null | od -An -tu4 | tr -d ' ')
    bsz=$(dd if="$1" bs=2048 skip=16 count=1 2>/dev/null | dd bs=1 skip=128 count=2 2>/dev/null | od -An -tu2 | tr -d ' ')
    case "$blocks$bsz" in '' | *[!0-9]*) return 1 ;; esac
    [ "$bsz" -gt 0 ] || return 1
    dd if="$1" bs="$bsz" count="$blocks" 2>/dev/null | sha256sum | cut -d' ' -f1
}

phone_home() {
    local url token macs nets cdsha body i status
    # image built with phone_home=False (build.py): like a stock agent, read and print the config drive only
    if [ -e /etc/stemforge/no-phone-home ]; then
        emit "{\"event\":\"phone-home\",\"ok\":false,\"disabled\":true}"
        return 0
    fi
    [ -s "$RUN/meta_data.json" ] || return 0
    awk -f "$SF/json.awk" "$RUN/meta_data.json" >"$RUN/meta.flat" 2>/dev/null || return 0
    url=$(FLAT=$RUN/meta.flat; jget meta/phone_home_url) || return 0
    token=$(FLAT=$RUN/meta.flat; jget meta/phone_home_token) || return 0
    [ -n "$url" ] && [ -n "$token" ] || return 0
    macs=$(for a in /sys/class/net/*/address; do
        n=${a%/address}
        [ "${n##*/}" = lo ] || cat "$a"
    done | json_list)
    nets=$(awk 'BEGIN { printf "[" } { printf "%s%s", (NR > 1 ? "," : ""), $0 } END { printf "]" }' "$RUN/networks.json" 2>/dev/null)
    [ -n "$nets" ] || nets="[]"
    cdsha=
    [ -n "$SRC_DEV" ] && cdsha=$(iso_sha256 "$SRC_DEV")
    body="{\"agent_id\":\"$(jget agent_id)\",\"hostname\":\"$(jesc "$(hostname)")\",\"networks\":$nets,\"macs\":$macs,\"configdrive_sha256\":\"$cdsha\",\"settings_sha256\":\"$CUR_SHA\",\"boot\":$BOOT}"
    i=1
    status=
    while [ "$i" -le "$PHONE_HOME_TRIES" ]; do
        if timeout 10 wget -q -O /dev/null --header "X-Stemforge-Token: $token" \
            --header "Content-Type: application/json" --post-data "$body" "$url" 2>"$RUN/phone-home.err"; then
            emit "{\"event\":\"phone-home\",\"ok\":true,\"attempts\":$i,\"url\":\"$(jesc "$url")\"}"
            return 0
        fi
        status=$(tr '\n' ' ' <"$RUN/phone-home.err")
        sleep 2
        i=$((i + 1))
    done
    emit "{\"event\":\"phone-home\",\"ok\":false,\"attempts\":$PHONE_HOME_TRIES,\"url\":\"$(jesc "$url")\",\"status\":\"$(jesc "$status")\"}"
    return 1
}

# ---------------------------------------------------------------- main
main() {
    if [ ! -f "$RUN/boot-counted" ]; then
        b=$(cat "$STATE/boot-count" 2>/dev/null)
        case "$b" in '' | *[!0-9]*) b=0 ;; esac
        echo $((b + 1)) >"$STATE/boot-count"
        : >"$RUN/boot-counted"
    fi
    BOOT=$(cat "$STATE/boot-count")
    root_disk
    if ! dr_load_config "$AGENT_JSON" "$SF/json.awk"; then
        err "agent-config" "$AGENT_JSON is not valid JSON; using bosh-agent's defaults"
    fi
    deadline=$(($(cut -d. -f1 /proc/uptime) + DRIVE_WAIT))
    found=false
    while :; do
        if read_config_drive; then
            found=true
            break
        fi
        [ "$(cut -d. -f1 /proc/uptime)" -ge "$deadline" ] && break
        sleep 0.5
    done
    if $found; then
        apply_settings config-drive
    elif [ -f "$CACHE" ] && cp "$CACHE" "$RUN/user-data.new"; then
        err "config-drive" "no config drive labelled config-2 found; using cached settings"
        apply_settings cache
    else
        err "config-drive" "no config drive labelled config-2 found and no cached settings"
    fi
    emit "{\"event\":\"ready\",\"uptime_s\":$(uptime_s),\"boot\":$BOOT,\"device_path_resolution\":\"$(jesc "$DR_TYPE")\",\"settings_sha256\":\"$CUR_SHA\"}"
    [ -n "$CUR_SHA" ] && phone_home &
    while :; do
        sleep "$POLL"
        poll_once
    done
}

main
