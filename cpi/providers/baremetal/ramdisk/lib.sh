# /sf/lib.sh of the stemforge deploy ramdisk (busybox sh), sourced by /init, deploy.sh and clean.sh.
#
# Reporting (events POSTed as JSON to $SF_API/events with the job token in X-Stemforge-Token), console logging
# (never the token), HTTP fetches, disk enumeration and wiping.  Everything the ramdisk keeps lives in $R (tmpfs).

R=/run/sf
mkdir -p "$R"
NOJSON='{}'  # the empty data object (a literal {} inside ${x:-...} would need escapes that survive "")

# Debian's static busybox wget crashes (SIGSEGV) with -T: every wget here is bounded by `timeout` instead.

# log MESSAGE: one line on the console.
log() {
    echo "sf-ramdisk: $*"
}

# now: seconds since boot with centiseconds ("12.34").
now() {
    cut -d' ' -f1 /proc/uptime
}

# jesc STRING: JSON-escape a string (control characters dropped).
jesc() {
    printf '%s' "$1" | tr '\n\t' '  ' | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' | tr -d '\000-\037'
}

# post_event KIND STAGE OK MESSAGE [DATA_JSON] [TRIES]: POST one event; status 1 when every try failed.
post_event() {
    local body i tries
    body="{\"kind\":\"$1\",\"stage\":\"$(jesc "$2")\",\"ok\":$3,\"message\":\"$(jesc "$4")\",\"data\":${5:-$NOJSON}}"
    tries=${6:-3}
    i=0
    while [ "$i" -lt "$tries" ]; do
        if timeout 15 wget -q -O /dev/null --header "X-Stemforge-Token: $SF_TOKEN" \
            --header "Content-Type: application/json" --post-data "$body" "$SF_API/events" 2>"$R/post.err"; then
            return 0
        fi
        i=$((i + 1))
        [ "$i" -lt "$tries" ] && sleep 1
    done
    log "could not report $1 $2: $(cat "$R/post.err" 2>/dev/null)"
    return 1
}

# stage NAME MESSAGE [DATA_JSON]: the ramdisk reached stage NAME.
stage() {
    echo "$1" >"$R/stage"
    log "stage $1: $2"
    post_event stage "$1" true "$2" "${3:-$NOJSON}"
}

# stay_up: never return (the provider powers the server off).  Heartbeats continue.
stay_up() {
    log "staying up; the provider powers this server off"
    while :; do sleep 3600; done
}

# fail STAGE MESSAGE: report the failure of STAGE with the exact error, then stay up.
fail() {
    echo "failed:$1" >"$R/stage"
    log "FAILED at $1: $2"
    post_event result "$1" false "$2" "${3:-$NOJSON}" 5
    stay_up
}

# fetch URL OUT: GET URL (job token header) into OUT; on failure ERR holds wget's message.
fetch() {
    ERR=
    if timeout 60 wget -q -O "$2" --header "X-Stemforge-Token: $SF_TOKEN" "$1" 2>"$R/fetch.err"; then
        return 0
    fi
    ERR="GET $1: $(tr '\n' ' ' <"$R/fetch.err" | sed 's/ *$//')"
    [ -s "$R/fetch.err" ] || ERR="GET $1: timed out after 60s"
    rm -f "$2"
    return 1
}

# start_heartbeat SECONDS: POST a heartbeat (with the current stage) every SECONDS in the background.
start_heartbeat() {
    (
        while :; do
            sleep "$1"
            post_event heartbeat "$(cat "$R/stage" 2>/dev/null)" true "" "{}" 1
        done
    ) </dev/null &
    HEARTBEAT_PID=$!
}

# ---------------------------------------------------------------- disks
# disk_list: names of the block devices that are disks (no partitions, loops, RAM, CD-ROMs, device mapper).
disk_list() {
    local s n
    for s in /sys/block/*; do
        n=${s##*/}
        case "$n" in loop* | ram* | sr* | fd* | zram* | dm-* | md* | nbd*) continue ;; esac
        [ -b "/dev/$n" ] || continue
        [ "$(cat "$s/size" 2>/dev/null || echo 0)" -gt 0 ] || continue
        echo "$n"
    done
}

disk_sectors() { cat "/sys/block/$1/size"; }
disk_bytes() { echo $(($(cat "/sys/block/$1/size") * 512)); }
# serial: virtio-blk and NVMe have a sysfs attribute; SCSI/SATA disks answer VPD page 0x80 (4-byte header).
disk_serial() {
    {
        cat "/sys/block/$1/serial" || cat "/sys/block/$1/device/serial" ||
            dd if="/sys/block/$1/device/vpd_pg80" bs=1 skip=4 | tr -d '\000'
    } 2>/dev/null | head -n 1 | sed 's/^ *//; s/ *$//'
}
disk_wwn() { { cat "/sys/block/$1/wwid" || cat "/sys/block/$1/device/wwid"; } 2>/dev/null | head -n 1 | sed 's/^ *//; s/ *$//'; }
disk_model() { cat "/sys/block/$1/device/model" 2>/dev/null | head -n 1 | sed 's/^ *//; s/ *$//'; }

# disk_partitions NAME: the partition device names of disk NAME.
disk_partitions() {
    local p
    for p in "/sys/block/$1/$1"*; do
        [ -e "$p/partition" ] && echo "${p##*/}"
    done
}

# wait_disks SECONDS: wait until at least one disk is there and the set stops changing (SCSI/AHCI scan async).
wait_disks() {
    local end prev cur
    end=$(($(cut -d. -f1 /proc/uptime) + $1))
    prev=
    while :; do
        cur=$(disk_list | tr '\n' ' ')
        if [ -n "$cur" ] && [ "$cur" = "$prev" ]; then
            return 0
        fi
        [ "$(cut -d. -f1 /proc/uptime)" -ge "$end" ] && { [ -n "$cur" ]; return; }
        prev=$cur
        sleep 1
    done
}

# disk_json NAME: {"name","device","size","serial","wwn","model"} of a disk.
disk_json() {
    printf '{"name":"%s","device":"/dev/%s","size":%s,"serial":"%s","wwn":"%s","model":"%s"}' \
        "$1" "$1" "$(disk_bytes "$1")" "$(jesc "$(disk_serial "$1")")" "$(jesc "$(disk_wwn "$1")")" \
        "$(jesc "$(disk_model "$1")")"
}

# zero DEV SEEK_SECTORS COUNT_SECTORS: write zeros (MiB blocks when aligned).
zero() {
    if [ $(($2 % 2048)) -eq 0 ] && [ $(($3 % 2048)) -eq 0 ]; then
        dd if=/dev/zero of="$1" bs=1048576 seek=$(($2 / 2048)) count=$(($3 / 2048)) conv=notrunc,fsync 2>"$R/zero.err"
    else
        dd if=/dev/zero of="$1" bs=512 seek="$2" count="$3" conv=notrunc,fsync 2>"$R/zero.err"
    fi
}

# wipe_disk NAME: Ironic's metadata erase -- filesystem signatures of every partition, then the disk's own
# (partition tables, both GPT copies, protective MBR), then zeros over the first and last MiB; re-read the
# partition table.  On failure ERR says why.
wipe_disk() {
    local n dev p sectors head tail
    n=$1
    dev=/dev/$n
    ERR=
    for p in $(disk_partitions "$n"); do
        wipefs -a -f "/dev/$p" >/dev/null 2>"$R/wipefs.err" || { ERR="wipefs /dev/$p: $(cat "$R/wipefs.err")"; return 1; }
    done
    wipefs -a -f "$dev" >/dev/null 2>"$R/wipefs.err" || { ERR="wipefs $dev: $(cat "$R/wipefs.err")"; return 1; }
    sectors=$(disk_sectors "$n")
    head=2048
    [ "$sectors" -lt "$head" ] && head=$sectors
    zero "$dev" 0 "$head" || { ERR="zeroing the first MiB of $dev: $(cat "$R/zero.err")"; return 1; }
    tail=2048
    [ "$sectors" -lt "$tail" ] && tail=$sectors
    zero "$dev" $((sectors - tail)) "$tail" || { ERR="zeroing the last MiB of $dev: $(cat "$R/zero.err")"; return 1; }
    blockdev --rereadpt "$dev" 2>/dev/null || partx -d "$dev" 2>/dev/null
    return 0
}
