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
    echo "sf-ramdisk: [$(cut -d' ' -f1 /proc/uptime)] $*"
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
# disk_wwid NAME: the WWID as sysfs shows it (naa.<hex>, eui.<hex>, t10.<text>), empty when the disk has none.
disk_wwid() { { cat "/sys/block/$1/wwid" || cat "/sys/block/$1/device/wwid"; } 2>/dev/null | head -n 1 | sed 's/^ *//; s/ *$//'; }
# disk_wwn NAME [with_extension|vendor_extension]: udev's ID_WWN (0x + the NAA's first 16 hex digits),
# ID_WWN_WITH_EXTENSION (0x + all of them) or ID_WWN_VENDOR_EXTENSION (0x + the digits after 16); other WWIDs
# (eui., t10.) as sysfs shows them.
disk_wwn() {
    local w hex
    w=$(disk_wwid "$1")
    case "$w" in
        naa.*)
            hex=$(echo "${w#naa.}" | tr 'A-F' 'a-f')
            case "$2" in
                with_extension) echo "0x$hex" ;;
                vendor_extension) [ ${#hex} -gt 16 ] && echo "0x$(echo "$hex" | cut -c17-)" ;;
                *) echo "0x$(echo "$hex" | cut -c1-16)" ;;
            esac
            ;;
        *) [ "$2" = vendor_extension ] || echo "$w" ;;
    esac
}
disk_model() { cat "/sys/block/$1/device/model" 2>/dev/null | head -n 1 | sed 's/^ *//; s/ *$//'; }
disk_vendor() { cat "/sys/block/$1/device/vendor" 2>/dev/null | head -n 1 | sed 's/^ *//; s/ *$//'; }
# disk_rotational NAME: true, false or null (the kernel's queue/rotational).
disk_rotational() {
    case "$(cat "/sys/block/$1/queue/rotational" 2>/dev/null)" in
        1) echo true ;;
        0) echo false ;;
        *) echo null ;;
    esac
}
# disk_hctl NAME: the SCSI address H:C:T:L (SCSI/SATA/virtio-scsi disks), else empty.
disk_hctl() {
    local l
    l=$(readlink "/sys/block/$1/device" 2>/dev/null)
    l=${l##*/}
    case "$l" in *:*:*:*) echo "$l" ;; esac
}
# disk_by_path NAME: the /dev/disk/by-path link udev would make (systemd's udev-builtin-path_id.c for the buses
# a server has: virtio-blk pci-<addr>, NVMe pci-<addr>-nvme-<nsid>, SATA pci-<addr>-ata-<port>, other SCSI
# pci-<addr>-scsi-<hctl>), from the device's sysfs path; empty when not on PCI.
disk_by_path() {
    local p pci port
    p=$(readlink -f "/sys/block/$1" 2>/dev/null)
    pci=$(echo "$p" | tr / '\n' | grep -E '^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$' | tail -n 1)
    [ -n "$pci" ] || return 0
    case "$p" in
        */ata[0-9]*/*)
            port=$(echo "$p" | tr / '\n' | grep -E '^ata[0-9]+$' | tail -n 1)
            echo "/dev/disk/by-path/pci-$pci-ata-${port#ata}"
            ;;
        */target*/*) echo "/dev/disk/by-path/pci-$pci-scsi-$(disk_hctl "$1")" ;;
        */nvme/*) echo "/dev/disk/by-path/pci-$pci-nvme-$(cat "/sys/block/$1/nsid" 2>/dev/null || echo 1)" ;;
        *) echo "/dev/disk/by-path/pci-$pci" ;;
    esac
}

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

# disk_json NAME: a disk as root-device hints see it (Ironic's device fields; size in bytes).
disk_json() {
    printf '{"name":"%s","device":"/dev/%s","size":%s,"serial":"%s","wwn":"%s","wwn_with_extension":"%s",' \
        "$1" "$1" "$(disk_bytes "$1")" "$(jesc "$(disk_serial "$1")")" "$(jesc "$(disk_wwn "$1")")" \
        "$(jesc "$(disk_wwn "$1" with_extension)")"
    printf '"wwn_vendor_extension":"%s","model":"%s","vendor":"%s","rotational":%s,"hctl":"%s","by_path":"%s"}' \
        "$(jesc "$(disk_wwn "$1" vendor_extension)")" "$(jesc "$(disk_model "$1")")" \
        "$(jesc "$(disk_vendor "$1")")" "$(disk_rotational "$1")" "$(disk_hctl "$1")" "$(jesc "$(disk_by_path "$1")")"
}

# disks_json: every disk of disk_list as a JSON array.
disks_json() {
    local n sep
    sep=
    printf '['
    for n in $(disk_list); do
        printf '%s' "$sep"
        disk_json "$n"
        sep=,
    done
    printf ']'
}

# post_for URL BODY OUT: POST the JSON BODY (job token header) and keep the answer in OUT; 3 tries; on failure
# ERR holds wget's message.
post_for() {
    local i
    ERR=
    i=0
    while [ "$i" -lt 3 ]; do
        if timeout 30 wget -q -O "$3" --header "X-Stemforge-Token: $SF_TOKEN" \
            --header "Content-Type: application/json" --post-data "$2" "$1" 2>"$R/post.err"; then
            return 0
        fi
        ERR="POST $1: $(tr '\n' ' ' <"$R/post.err" | sed 's/ *$//')"
        [ -s "$R/post.err" ] || ERR="POST $1: timed out after 30s"
        case "$ERR" in *" 4"[0-9][0-9]*) break ;; esac # a 4xx answer does not change on retry
        i=$((i + 1))
        sleep 1
    done
    rm -f "$3"
    return 1
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

# range_open URL OFFSET LENGTH SECONDS: send "GET URL" for bytes OFFSET..OFFSET+LENGTH-1 (job token header) and
# write the raw HTTP answer (status line, headers, body) to stdout, bounded by SECONDS.  Busybox wget refuses a
# 206 answer to a Range header it did not make itself (it only sends one for -c), so this speaks HTTP/1.0 over
# busybox nc; range_headers reads the head of the answer, and the body follows on the same stream.
range_open() {
    local rest hostport host port path
    rest=${1#http://}
    hostport=${rest%%/*}
    path=/${rest#*/}
    [ "$rest" = "$hostport" ] && path=/
    host=${hostport%:*}
    port=${hostport##*:}
    [ "$port" = "$hostport" ] && port=80
    printf 'GET %s HTTP/1.0\r\nHost: %s\r\nRange: bytes=%s-%s\r\nX-Stemforge-Token: %s\r\nConnection: close\r\n\r\n' \
        "$path" "$hostport" "$2" $(($2 + $3 - 1)) "$SF_TOKEN" | timeout "$4" nc "$host" "$port"
}

# range_headers OFFSET LENGTH: read the status line and headers of range_open's answer from stdin (the shell's
# read takes a pipe byte by byte: what follows is exactly the body); the status must be 206 and Content-Range
# must start at OFFSET, else "server returned error: <status line>" on stderr (stream_once classifies that like
# wget's message: HTTP 4xx is not retried) and status 1.
range_headers() {
    local cr status line crange
    cr=$(printf '\r')
    read -r status
    status=${status%"$cr"}
    case "$status" in
        "HTTP/1."?" 206 "*) ;;
        '') echo "server returned error: no answer" >&2; return 1 ;;
        *) echo "server returned error: $status" >&2; return 1 ;;
    esac
    crange=
    while read -r line; do
        line=${line%"$cr"}
        [ -z "$line" ] && break
        case "$line" in [Cc]ontent-[Rr]ange:*) crange=${line#*:} ;; esac
    done
    case "$crange" in
        " bytes $1-$(($1 + $2 - 1))/"*) return 0 ;;
        *) echo "server returned error: Content-Range '$crange' is not bytes $1-$(($1 + $2 - 1))" >&2; return 1 ;;
    esac
}

# ---------------------------------------------------------------- RAID and LVM (clean.sh, layout.sh)
# LVM runs without udev (/etc/lvm/lvm.conf: no udev sync, rules or device list); its lock directory is on /run.
lvmc() {
    mkdir -p /run/lock/lvm
    lvm "$@"
}

# md_devices: the md arrays the kernel has (md0, md127, ...).
md_devices() {
    local s
    for s in /sys/block/md*; do
        [ -e "$s" ] && echo "${s##*/}"
    done
}

# storage_teardown: what a previous tenant left assembled or can be assembled, taken apart in the order that
# leaves no metadata behind: assemble every md array found (mdadm --assemble --scan: superblocks on any
# partition), activate every VG; wipe the signatures inside every LV (+ their ext superblock copies through
# ext_copies when clean.sh defines it), remove the VGs and PV labels (vgremove/pvremove: LVM metadata), wipe every
# md device, stop the arrays and zero the md superblock of every member.  Sets TEARDOWN (what it did, for events).
# On failure ERR says why.  (ironic-python-agent's hardware.py _delete_raid / remove_partitions do the same dance
# before erase_devices_metadata.)
storage_teardown() {
    local md lv pv vg dev
    ERR=
    TEARDOWN=
    mdadm --assemble --scan --run >"$R/md-assemble.log" 2>&1
    lvmc vgscan --mknodes >/dev/null 2>&1
    lvmc vgchange -ay >/dev/null 2>&1
    for lv in $(lvmc lvs --noheadings -o lv_path 2>/dev/null); do
        command -v ext_copies >/dev/null 2>&1 && { ext_copies "$lv" || return 1; }
        wipefs -a -f "$lv" >/dev/null 2>"$R/wipefs.err" || { ERR="wipefs $lv: $(cat "$R/wipefs.err")"; return 1; }
        TEARDOWN="$TEARDOWN lv:$lv"
    done
    for vg in $(lvmc vgs --noheadings -o vg_name 2>/dev/null); do
        lvmc vgchange -an "$vg" >/dev/null 2>&1
        lvmc vgremove -ff -y "$vg" >"$R/lvm.err" 2>&1 || { ERR="vgremove $vg: $(tail -n 2 "$R/lvm.err")"; return 1; }
        TEARDOWN="$TEARDOWN vg:$vg"
    done
    for pv in $(lvmc pvs --noheadings -o pv_name 2>/dev/null); do
        lvmc pvremove -ff -y "$pv" >"$R/lvm.err" 2>&1 || { ERR="pvremove $pv: $(tail -n 2 "$R/lvm.err")"; return 1; }
        TEARDOWN="$TEARDOWN pv:$pv"
    done
    for md in $(md_devices); do
        dev=/dev/$md
        : >"$R/md-members"
        for s in /sys/block/"$md"/slaves/*; do
            [ -e "$s" ] && echo "/dev/${s##*/}" >>"$R/md-members"
        done
        wipefs -a -f "$dev" >/dev/null 2>&1
        mdadm --stop "$dev" >"$R/md.err" 2>&1 || { ERR="mdadm --stop $dev: $(tail -n 2 "$R/md.err")"; return 1; }
        while read -r pv; do
            mdadm --zero-superblock "$pv" >"$R/md.err" 2>&1 ||
                { ERR="mdadm --zero-superblock $pv: $(tail -n 2 "$R/md.err")"; return 1; }
        done <"$R/md-members"
        TEARDOWN="$TEARDOWN md:$md($(tr '\n' ' ' <"$R/md-members" | sed 's/ $//'))"
    done
    return 0
}

# md_zero_all NAME: mdadm --zero-superblock on every partition of disk NAME and on the disk (arrays stopped):
# superblocks of arrays that could not be assembled (a member missing) go too.
md_zero_all() {
    local p
    for p in $(disk_partitions "$1") "$1"; do
        mdadm --examine "/dev/$p" >/dev/null 2>&1 || continue
        mdadm --zero-superblock --force "/dev/$p" >"$R/md.err" 2>&1 ||
            { ERR="mdadm --zero-superblock /dev/$p: $(tail -n 2 "$R/md.err")"; return 1; }
        MD_ZEROED=$((MD_ZEROED + 1))
    done
    return 0
}
