# /sf/inspect.sh of the stemforge deploy ramdisk (busybox sh), sourced by /init when SF_MODE=inspect.
#
# Ironic's inspector / MAAS commissioning, read-only: nothing is written to any disk.  Collects the hardware
# facts from sysfs/procfs and reports them as the data of the "result" event (ok=true, stage "done"):
#   {"inventory": {"disks": [disk_json...], "nics": [{"name","mac","link","speed_mbps","driver"}],
#    "cpu": {"count","arch","model"}, "memory": {"total_bytes","physical_mib"}, "boot": {"mode": "uefi"|"bios"},
#    "firmware": {"bios_vendor","bios_version","bios_date","sys_vendor","product_name","board_vendor",
#                 "board_name"}, "kernel": "<uname -r>"}}
# then powers the server off.  link is true/false (carrier) or null when the NIC is down; speed_mbps is null
# where the kernel does not know it (virtio says -1).  physical_mib counts the online memory blocks
# (/sys/devices/system/memory), total_bytes is MemTotal (what the kernel may use).

# jstr VALUE: a JSON string.
jstr() { printf '"%s"' "$(jesc "$1")"; }

# first_line FILE: the file's first line, trimmed (empty when unreadable).
first_line() { head -n 1 "$1" 2>/dev/null | sed 's/^ *//; s/ *$//'; }

nics_json() {
    local a n sep carrier speed link drv
    sep=
    printf '['
    for a in /sys/class/net/*; do
        n=${a##*/}
        [ "$n" = lo ] && continue
        [ -e "$a/device" ] || continue
        carrier=$(cat "$a/carrier" 2>/dev/null)
        case "$carrier" in 1) link=true ;; 0) link=false ;; *) link=null ;; esac
        speed=$(cat "$a/speed" 2>/dev/null)
        case "$speed" in '' | -* | *[!0-9]*) speed=null ;; esac
        drv=$(readlink "$a/device/driver" 2>/dev/null)
        printf '%s{"name":%s,"mac":%s,"link":%s,"speed_mbps":%s,"driver":%s}' "$sep" "$(jstr "$n")" \
            "$(jstr "$(cat "$a/address")")" "$link" "$speed" "$(jstr "${drv##*/}")"
        sep=,
    done
    printf ']'
}

memory_json() {
    local total block online m
    total=$(awk '/^MemTotal:/ { print $2 * 1024 }' /proc/meminfo)
    block=$(cat /sys/devices/system/memory/block_size_bytes 2>/dev/null)
    online=0
    if [ -n "$block" ]; then
        for m in /sys/devices/system/memory/memory*; do
            [ "$(cat "$m/online" 2>/dev/null)" = 1 ] && online=$((online + 1))
        done
        printf '{"total_bytes":%s,"physical_mib":%s}' "${total:-0}" $((online * 0x$block / 1048576))
    else
        printf '{"total_bytes":%s,"physical_mib":null}' "${total:-0}"
    fi
}

firmware_json() {
    local f sep
    sep=
    printf '{'
    for f in bios_vendor bios_version bios_date sys_vendor product_name board_vendor board_name; do
        printf '%s"%s":%s' "$sep" "$f" "$(jstr "$(first_line "/sys/class/dmi/id/$f")")"
        sep=,
    done
    printf '}'
}

inventory_json() {
    local mode
    mode=bios
    [ -d /sys/firmware/efi ] && mode=uefi
    printf '{"inventory":{"disks":%s,"nics":%s,' "$(disks_json)" "$(nics_json)"
    printf '"cpu":{"count":%s,"arch":%s,"model":%s},' "$(grep -c '^processor' /proc/cpuinfo)" "$(jstr "$(uname -m)")" \
        "$(jstr "$(sed -n 's/^model name[[:space:]]*: *//p' /proc/cpuinfo | head -n 1)")"
    printf '"memory":%s,"boot":{"mode":"%s"},"firmware":%s,"kernel":%s}}' "$(memory_json)" "$mode" \
        "$(firmware_json)" "$(jstr "$(uname -r)")"
}

inspect_main() {
    local report disks nics
    echo inspect >"$R/stage"
    wait_disks 20 || log "no disks found (a diskless server is inspected all the same)"
    report=$(inventory_json)
    disks=$(disk_list | wc -w)
    nics=$(printf '%s' "$report" | grep -o '"mac":' | wc -l)
    stage inspected "$disks disk(s), $nics NIC(s)" "{\"disks\":$disks,\"nics\":$nics}"
    post_event result done true "inspected: $disks disk(s), $nics NIC(s); powering off" "$report" 5 ||
        fail inspect "the inspection report could not be sent"
    log "powering off"
    sleep 1
    poweroff -f
    stay_up
}
