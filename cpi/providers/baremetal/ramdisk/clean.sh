# /sf/clean.sh of the stemforge deploy ramdisk (busybox sh), sourced by /init when SF_MODE=clean.
#
# Ironic's erase_devices_metadata: for every disk (see disk_list in lib.sh), wipe the filesystem signatures of its
# partitions and the disk's own (partition tables, both GPT copies), zero the first and last MiB, re-read the
# partition table, and report stage "disk-wiped" with {"name","device","size",...}.  Then stage "done", a "result"
# event with ok=true and `poweroff -f`.  A failure reports result ok=false at stage "clean" naming the disk.

clean_main() {
    local n count
    echo clean >"$R/stage"
    wait_disks 20 || log "no disks found"
    count=0
    for n in $(disk_list); do
        wipe_disk "$n" || fail clean "disk /dev/$n: $ERR"
        sync
        stage disk-wiped "wiped /dev/$n ($(($(disk_bytes "$n") / 1048576)) MiB)" "$(disk_json "$n")"
        count=$((count + 1))
    done
    echo finish >"$R/stage"
    stage done "cleaned $count disk(s)" "{\"disks\":$count}"
    post_event result done true "cleaned $count disk(s); powering off" "{\"disks\":$count}" 5 ||
        log "the result could not be reported; powering off anyway"
    log "powering off"
    sleep 1
    poweroff -f
    stay_up
}
