# diskresolve.sh - how the stemforge test agent finds a disk's device, following bosh-agent.
# Sourced (busybox sh) by agent.sh in the guest and by tests/stemcells/test_disk_hints_resolver.py on the
# host, which runs these very functions against recorded /dev layouts under a temporary root.
#
# Every path the functions touch is "$DR_ROOT<absolute path>" (DR_ROOT is empty in the guest).
# A wait ends when its time is over AND the resolver has looked as many times as bosh-agent does in that
# time (one look per 100 ms): a shell in a slow emulated guest must not get fewer looks than the Go agent.
# Results go to globals, never to stdout, so callers need no subshell:
#   DR_DEV      the device path as bosh-agent would return it (for the ID resolver the target of
#               the by-id link, for the mapped resolver the hint path or its /dev/sdX mapping)
#   DR_HOW      id | mapped | identity            DR_ERR   why it failed     DR_TIMEOUT  true|false
#   DR_ID_ERR   why the ID resolver gave way to the mapped one
#
# The algorithm is bosh-agent's (github.com/cloudfoundry/bosh-agent; see README.md next to this
# file for the exact files and commits):
#   * DevicePathResolutionType "virtio" (platform/provider.go): the ID resolver with a 500 ms wait,
#     then the mapped resolver with a 30 s wait (virtio_device_path_resolver.go).
#   * ID resolver (id_device_path_resolver.go): fails at once when the disk ID is empty or shorter
#     than 20 characters.  The ID is the disk CID (settings.go PersistentDiskSettings; an ephemeral
#     disk has none).  "udevadm trigger; udevadm settle" (here: dr_udev_links), then the ID goes
#     through DiskIDTransformPattern/Replacement when the pattern matches; the glob is
#     /dev/disk/by-id/<transformed> when a pattern is configured, /dev/disk/by-id/*<transformed>
#     otherwise.  Until the deadline: sleep 100 ms, glob; one match -> follow the link (all the way,
#     ReadAndFollowLink) and return the target if it exists; several matches -> fail at once.
#   * mapped resolver (mapped_device_path_resolver.go): a path starting /dev/sd is looked for as
#     /dev/xvd<rest>, /dev/vd<rest>, /dev/sd<rest> (first that exists); any other path as it is.
#     Tried once, then every 100 ms until the wait is over.  Before each try, as bosh-agent does,
#     a SCSI host that has sda at *:0:0:0 is asked to rescan.
#   * DevicePathResolutionType "" : the identity resolver (the hint path, unchecked).
#   Other types (scsi, iscsi) are not imitated: DR_ERR says so.
# The hint's "id" (DeviceID in bosh-agent) is not used by any of these, so it is not used here.

DR_ROOT=${DR_ROOT:-}
DR_ID_WAIT_MS=${DR_ID_WAIT_MS:-500}
DR_MAPPED_WAIT_MS=${DR_MAPPED_WAIT_MS:-30000}
DR_TYPE=
DR_PATTERN=
DR_REPLACEMENT=
DR_DEV=
DR_HOW=
DR_ERR=
DR_ID_ERR=
DR_TIMEOUT=false

# dr_now_ms: milliseconds since boot (of the machine running the shell).
dr_now_ms() {
    awk '{ printf "%d\n", $1 * 1000 }' /proc/uptime
}

# dr_load_config FILE JSON_AWK: read Platform.Linux.{DevicePathResolutionType,DiskIDTransformPattern,
# DiskIDTransformReplacement} of an agent.json.  A missing file or key reads as "" (bosh-agent's
# zero values).  Status 1 when the file exists but is not valid JSON.
dr_load_config() {
    local flat
    DR_TYPE=
    DR_PATTERN=
    DR_REPLACEMENT=
    [ -f "$1" ] || return 0
    flat=$(awk -f "$2" "$1" 2>/dev/null) || return 1
    DR_TYPE=$(dr_flat_get "$flat" Platform/Linux/DevicePathResolutionType)
    DR_PATTERN=$(dr_flat_get "$flat" Platform/Linux/DiskIDTransformPattern)
    DR_REPLACEMENT=$(dr_flat_get "$flat" Platform/Linux/DiskIDTransformReplacement)
    return 0
}

# dr_flat_get FLAT PATH: the string at PATH of json.awk output, JSON escapes \\ \" \/ undone.
dr_flat_get() {
    printf '%s\n' "$1" | P="$2" awk -F'\t' '
        $1 == ENVIRON["P"] && $2 == "s" {
            v = $3; out = ""
            while ((i = index(v, "\\")) > 0) {
                out = out substr(v, 1, i - 1) substr(v, i + 1, 1)
                v = substr(v, i + 2)
            }
            print out v
        }'
}

# dr_udev_escape STRING: what udev leaves of a serial in a symlink name (characters other than
# alphanumerics and #+-.:=@_ become "_", as udev_replace_chars does).
dr_udev_escape() {
    printf '%s' "$1" | sed -e 's/[^A-Za-z0-9#+.:=@_-]/_/g'
}

# dr_udev_links: what "udevadm trigger && udevadm settle" leaves in /dev/disk/by-id for virtio-blk
# disks under systemd's 60-persistent-storage.rules:
#   KERNEL=="vd*", ATTRS{serial}=="?*", ENV{ID_SERIAL}="$attr{serial}",
#     SYMLINK+="disk/by-id/virtio-$env{ID_SERIAL}$env{.PART_SUFFIX}"      (.PART_SUFFIX "-part%n")
# i.e. virtio-<serial> -> ../../vdX and virtio-<serial>-partN -> ../../vdXN, for disks whose serial
# attribute is not empty.  Links of devices that are gone are removed (udev does on "remove").
dr_udev_links() {
    local byid l s dev serial name p pn
    byid=$DR_ROOT/dev/disk/by-id
    mkdir -p "$byid"
    for l in "$byid"/virtio-*; do
        [ -L "$l" ] || continue
        [ -e "$l" ] || rm -f "$l"
    done
    for s in "$DR_ROOT"/sys/block/vd*/serial; do
        [ -f "$s" ] || continue
        dev=${s%/serial}
        name=${dev##*/}
        serial=$(cat "$s" 2>/dev/null | sed -e 's/[[:space:]]*$//')
        [ -n "$serial" ] || continue
        serial=$(dr_udev_escape "$serial")
        [ -e "$DR_ROOT/dev/$name" ] || continue
        ln -sfn "../../$name" "$byid/virtio-$serial"
        for p in "$dev/$name"*; do
            [ -f "$p/partition" ] || continue
            pn=$(cat "$p/partition")
            [ -e "$DR_ROOT/dev/${p##*/}" ] && ln -sfn "../../${p##*/}" "$byid/virtio-$serial-part$pn"
        done
    done
}

# dr_transform ID: DiskIDTransformPattern/Replacement applied to ID when the pattern matches
# (Go regexp ReplaceAllString; the replacement's ${n} / $n become sed's \n).
dr_transform() {
    local d repl
    if [ -z "$DR_PATTERN" ] || ! printf '%s\n' "$1" | grep -Eq -- "$DR_PATTERN"; then
        printf '%s\n' "$1"
        return 0
    fi
    d=$(printf '\001')
    repl=$(printf '%s' "$DR_REPLACEMENT" | sed -e 's/[\\&]/\\&/g' -e 's/\${\([0-9]\)}/\\\1/g' -e 's/\$\([0-9]\)/\\\1/g')
    printf '%s\n' "$1" | sed -E "s$d$DR_PATTERN$d$repl${d}g"
}

# dr_strip_root PATH: PATH without the (canonical) root prefix.
dr_strip_root() {
    local rc
    if [ -z "$DR_ROOT" ]; then
        printf '%s\n' "$1"
        return 0
    fi
    rc=$(readlink -f "$DR_ROOT")
    printf '%s\n' "${1#"$rc"}"
}

# dr_resolve_id CID: bosh-agent's idDevicePathResolver.
dr_resolve_id() {
    local cid t glob deadline m n first real tries
    cid=$1
    DR_TIMEOUT=false
    if [ -z "$cid" ]; then
        DR_ERR="Disk ID is not set"
        return 1
    fi
    if [ ${#cid} -lt 20 ]; then
        DR_ERR="Disk ID is not the correct format"
        return 1
    fi
    dr_udev_links
    t=$(dr_transform "$cid")
    if [ -n "$DR_PATTERN" ]; then glob=$t; else glob="*$t"; fi
    deadline=$(($(dr_now_ms) + DR_ID_WAIT_MS))
    tries=0
    while :; do
        if [ "$tries" -ge $((DR_ID_WAIT_MS / 100)) ] && [ "$(dr_now_ms)" -gt "$deadline" ]; then
            DR_ERR="Timed out getting real device path for '$cid'"
            DR_TIMEOUT=true
            return 1
        fi
        sleep 0.1
        tries=$((tries + 1))
        dr_udev_links # udevd keeps adding links for devices that appear meanwhile
        n=0
        first=
        for m in "$DR_ROOT"/dev/disk/by-id/$glob; do
            [ -e "$m" ] || [ -L "$m" ] || continue
            n=$((n + 1))
            [ -n "$first" ] || first=$m
        done
        case $n in
            0) continue ;;
            1)
                real=$(readlink -f "$first") || continue
                if [ -e "$real" ]; then
                    DR_DEV=$(dr_strip_root "$real")
                    return 0
                fi
                ;;
            *)
                DR_ERR="More than one disk matched glob \"/dev/disk/by-id/$glob\" while getting real device path for \"$cid\""
                DR_TIMEOUT=true
                return 1
                ;;
        esac
    done
}

# dr_scsi_rescan: mappedDevicePathResolver.scanForSCSIDevices (the host of sda at <h>:0:0:0 rescans).
dr_scsi_rescan() {
    local b h
    for b in "$DR_ROOT"/sys/bus/scsi/devices/*:0:0:0/block/sda; do
        [ -e "$b" ] || continue
        h=${b%/block/sda}
        h=${h##*/}
        h=${h%%:*}
        echo "- - -" >"$DR_ROOT/sys/class/scsi_host/host$h/scan" 2>/dev/null
    done
    return 0
}

# dr_find_possible PATH: mappedDevicePathResolver.findPossibleDevice.
dr_find_possible() {
    local rest p
    dr_scsi_rescan
    case "$1" in
        /dev/sd*)
            rest=${1#/dev/sd}
            for p in /dev/xvd /dev/vd /dev/sd; do
                if [ -e "$DR_ROOT$p$rest" ]; then
                    DR_DEV=$p$rest
                    return 0
                fi
            done
            ;;
        *)
            if [ -e "$DR_ROOT$1" ]; then
                DR_DEV=$1
                return 0
            fi
            ;;
    esac
    return 1
}

# dr_resolve_mapped PATH: bosh-agent's mappedDevicePathResolver.
dr_resolve_mapped() {
    local deadline tries
    DR_TIMEOUT=false
    if [ -z "$1" ]; then
        DR_ERR="Getting real device path: path is missing"
        return 1
    fi
    deadline=$(($(dr_now_ms) + DR_MAPPED_WAIT_MS))
    tries=0
    dr_find_possible "$1" && return 0
    while :; do
        if [ "$tries" -ge $((DR_MAPPED_WAIT_MS / 100)) ] && [ "$(dr_now_ms)" -gt "$deadline" ]; then
            DR_ERR="Timed out getting real device path for $1"
            DR_TIMEOUT=true
            return 1
        fi
        sleep 0.1
        tries=$((tries + 1))
        dr_find_possible "$1" && return 0
    done
}

# dr_resolve ID PATH: the configured resolver for one disk (ID: the disk CID for persistent disks,
# "" for the ephemeral and system disks; PATH: the hint's path, or the hint itself when a string).
dr_resolve() {
    DR_DEV=
    DR_HOW=
    DR_ERR=
    DR_ID_ERR=
    DR_TIMEOUT=false
    case "$DR_TYPE" in
        virtio)
            if dr_resolve_id "$1"; then
                DR_HOW=id
                return 0
            fi
            DR_ID_ERR=$DR_ERR
            if dr_resolve_mapped "$2"; then
                DR_HOW=mapped
                return 0
            fi
            DR_ERR="Resolving mapped device path: $DR_ERR"
            return 1
            ;;
        '')
            if [ -z "$2" ]; then
                DR_ERR="Getting real device path: path is missing"
                return 1
            fi
            DR_HOW=identity
            DR_DEV=$2
            return 0
            ;;
        *)
            DR_ERR="DevicePathResolutionType '$DR_TYPE' is not imitated by the stemforge test agent"
            return 1
            ;;
    esac
}
