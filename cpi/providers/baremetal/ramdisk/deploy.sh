# /sf/deploy.sh of the stemforge deploy ramdisk (busybox sh), sourced by /init when SF_MODE=deploy.
#
# Stages (each reported as an event): disk-selected -> image-written -> checksum-ok -> configdrive-written -> done,
# then a "result" event with ok=true and `reboot -f`.  A failure reports a "result" event with ok=false naming the
# failed stage (instructions, disk-select, wipe, image, checksum, configdrive, finish) and the exact error.
#
# * Root disk: the ramdisk POSTs every disk it sees (disk_json: Ironic's device fields) to $SF_API/root-device and
#   writes to the disk the answer names (SF_ROOT_DEVICE); metal serve chooses it with Ironic's root-device hint
#   rules (cpi/providers/baremetal/root_hints.py, the only implementation), and an SF_ROOT_ERROR answer (no disk
#   matches the hints / none of at least 4 GiB; it names the hints and every disk) fails stage disk-select.
#   SF_ROOT_HINTS is shown on the console only.
# * The disk is wiped first (signatures of its partitions and of the disk: both GPT copies, the MBR; zeros over
#   the first and last MiB).
# * The image is streamed: wget -O- | sfwrite (sfwrite.c: one process computing SHA-256 on the stream, inflating
#   gzip in-process, sniffing the first MiB -- qcow2/gzip/xz/zstd/bzip2/vmdk/vhdx magic where raw data was
#   promised is an error and nothing is written then -- and writing the disk in 1 MiB blocks; exactly
#   SF_IMAGE_SIZE bytes or it fails; all-zero blocks are zeroed with BLKZEROOUT instead of written).  Nothing is
#   staged in RAM beyond one MiB.
#   SF_IMAGE_SHA256 is the sha256 of the bytes served at SF_IMAGE_URL (the compressed file for gzip);
#   SF_IMAGE_SIZE the number of bytes written to the disk (the raw image's size).  A short read (wget: connection
#   closed prematurely), a size mismatch or a checksum mismatch fails the deploy; after a failed write or checksum
#   the disk is wiped again so a partial image can never boot.  Transient download errors (not HTTP 4xx) are
#   retried up to 3 times.
# * Config drive: the ISO (<= 64 MiB, ISO 9660 labelled config-2) is fetched from SF_CONFIGDRIVE_URL and written
#   into a new partition over the last 64 MiB of the disk (MBR: a primary partition, type 83; GPT: the backup
#   header is moved to the disk's end first, then a partition named config-2); the partition's unused rest is
#   zeroed; sync; the kernel re-reads the partition table and the partition must show up.
# * Benchmark mode (kernel argument sf.bench=N): after checksum-ok, N rounds each timing a plain
#   `wget -O- | dd bs=1M` of the same image onto the same disk and our pipeline again (alternating order),
#   reported as events of kind "bench".
# * SF_DEPLOY_KIND=layout: the file-based deploy onto a storage layout (RAID, LVM, several filesystems) is
#   layout.sh's (it reuses stream_once and fetch_configdrive from here).

MIB=1048576
CD_MAX=67108864
CD_SECTORS=131072

# ---------------------------------------------------------------- disk selection
select_disk() {
    local bad
    ROOT=
    post_for "$SF_API/root-device" "{\"disks\":$(disks_json)}" "$R/root-device" || return 1
    bad=$(grep -Ev "^SF_ROOT_(DEVICE|ERROR)='([^']|'\\\\'')*'\$" "$R/root-device" | grep -v '^$' | head -n 1)
    [ -z "$bad" ] || { ERR="malformed root-device answer: $(printf '%s' "$bad" | cut -c1-80)"; return 1; }
    SF_ROOT_DEVICE=
    SF_ROOT_ERROR=
    . "$R/root-device"
    [ -z "$SF_ROOT_ERROR" ] || { ERR=$SF_ROOT_ERROR; return 1; }
    if ! disk_list | grep -qx "$SF_ROOT_DEVICE"; then
        ERR="the root-device answer names '$SF_ROOT_DEVICE', which is not one of the disks: $(disk_list | tr '\n' ' ')"
        return 1
    fi
    ROOT=$SF_ROOT_DEVICE
    return 0
}

# ---------------------------------------------------------------- the image stream
# The download is bounded at 1 MiB/s on average plus 5 minutes (busybox wget has no usable stall timeout).  With
# SF_IMAGE_OFFSET set (a layout deploy's root partition) only that byte range is fetched (range_open and
# range_headers, lib.sh).
fetch_image() {
    timeout $((SF_IMAGE_SIZE / MIB + 300)) wget -q -O- --header "X-Stemforge-Token: $SF_TOKEN" "$SF_IMAGE_URL" 2>"$R/wget.err"
    echo $? >"$R/wget.rc"
}

# write_image DEV: sfwrite the stream on stdin onto DEV (status in writer.rc, its report in writer.out/err).
write_image() {
    sfwrite "$SF_IMAGE_FORMAT" "$SF_IMAGE_SIZE" "$1" >"$R/writer.out" 2>"$R/writer.err"
    echo $? >"$R/writer.rc"
}

# stream_once DEV: one attempt: wget | sfwrite.  Sets BYTES, GOT_SHA; on failure ERR and RETRY (true for
# transient download errors).
stream_once() {
    local wrc
    rm -f "$R/wget.rc" "$R/wget.err" "$R/writer.rc" "$R/writer.err" "$R/writer.out"
    if [ -n "$SF_IMAGE_OFFSET" ]; then
        # one byte range (a layout deploy's root partition): sfwrite reads the body right after the headers
        range_open "$SF_IMAGE_URL" "$SF_IMAGE_OFFSET" "$SF_IMAGE_SIZE" $((SF_IMAGE_SIZE / MIB + 300)) 2>/dev/null | {
            if range_headers "$SF_IMAGE_OFFSET" "$SF_IMAGE_SIZE" 2>"$R/wget.err"; then
                echo 0 >"$R/wget.rc"
                write_image "$1"
            else
                echo 1 >"$R/wget.rc"
            fi
        }
    else
        fetch_image | write_image "$1"
    fi
    RETRY=false
    wrc=$(cat "$R/writer.rc" 2>/dev/null || echo 1)
    ERR=$(head -n 1 "$R/writer.err" 2>/dev/null)
    case "$wrc" in
        2 | 3) return 1 ;;  # refused / longer than announced: the download's own status is SIGPIPE then
    esac
    if [ "$(cat "$R/wget.rc" 2>/dev/null)" != 0 ]; then
        ERR="download of $SF_IMAGE_URL failed: $(tr '\n' ' ' <"$R/wget.err" | sed 's/ *$//')"
        [ "$(cat "$R/wget.rc")" = 143 ] && ERR="download of $SF_IMAGE_URL timed out after $((SF_IMAGE_SIZE / MIB + 300))s"
        case "$ERR" in
            *"server returned error: HTTP/"*" 4"[0-9][0-9]*) ;;
            *) RETRY=true ;;
        esac
        return 1
    fi
    if [ "$wrc" != 0 ]; then
        [ -n "$ERR" ] || ERR="the image writer failed (status $wrc)"
        return 1
    fi
    BYTES=$(sed -n 's/^bytes=\([0-9]*\) .*/\1/p' "$R/writer.out")
    GOT_SHA=$(sed -n 's/.* sha256=\([0-9a-f]*\).*/\1/p' "$R/writer.out")
    ZEROED=$(sed -n 's/.* zeroed=\([0-9]*\).*/\1/p' "$R/writer.out")
    if [ "$BYTES" != "$SF_IMAGE_SIZE" ] || [ ${#GOT_SHA} -ne 64 ]; then
        ERR="the image writer reported '$(cat "$R/writer.out")' for SF_IMAGE_SIZE $SF_IMAGE_SIZE"
        return 1
    fi
    return 0
}

# stream_image DEV: stream_once with bounded retries of transient download errors.
stream_image() {
    local attempt
    attempt=1
    while :; do
        stream_once "$1" && return 0
        $RETRY || return 1
        [ "$attempt" -ge 3 ] && { ERR="$ERR (after $attempt attempts)"; return 1; }
        log "attempt $attempt: $ERR; retrying"
        attempt=$((attempt + 1))
        sleep 2
    done
}

# elapsed T0 T1: seconds between two `now` values.
elapsed() {
    awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'
}

mibps() {
    awk -v n="$1" -v s="$2" 'BEGIN { if (s <= 0) s = 0.01; printf "%.1f", n / 1048576 / s }'
}

# ---------------------------------------------------------------- config drive
iso_label() {
    dd if="$1" bs=1 skip=32808 count=32 2>/dev/null | tr -d ' \000'
}

# fetch_configdrive: GET SF_CONFIGDRIVE_URL into $R/configdrive.iso and check it (not empty, at most 64 MiB, ISO
# 9660 labelled config-2); sets ISO and ISO_BYTES; fails stage configdrive otherwise.
fetch_configdrive() {
    local iso isz
    iso=$R/configdrive.iso
    fetch "$SF_CONFIGDRIVE_URL" "$iso" || fail configdrive "$ERR"
    isz=$(wc -c <"$iso")
    [ "$isz" -gt 0 ] || fail configdrive "the config drive from $SF_CONFIGDRIVE_URL is empty"
    [ "$isz" -le "$CD_MAX" ] || fail configdrive "the config drive is $isz bytes, more than the 64 MiB limit"
    [ "$(dd if="$iso" bs=1 skip=32769 count=5 2>/dev/null)" = CD001 ] ||
        fail configdrive "the config drive from $SF_CONFIGDRIVE_URL is not an ISO 9660 image"
    case "$(iso_label "$iso")" in
        config-2 | CONFIG-2) ;;
        *) fail configdrive "the config drive's volume label is '$(iso_label "$iso")', not config-2" ;;
    esac
    ISO=$iso
    ISO_BYTES=$isz
}

write_configdrive() {
    local n dev iso isz sectors label start size spec num p out rc
    n=$1
    dev=/dev/$n
    fetch_configdrive
    iso=$ISO
    isz=$ISO_BYTES
    sectors=$(disk_sectors "$n")
    label=$(sfdisk -d "$dev" 2>/dev/null | sed -n 's/^label: *//p')
    case "$label" in
        gpt)
            out=$(sfdisk --relocate gpt-bak-std --no-reread --no-tell-kernel "$dev" 2>&1) ||
                fail configdrive "moving the backup GPT header to the end of $dev: $out"
            start=$(((sectors - 34 - CD_SECTORS) / 2048 * 2048))
            size=$((sectors - 33 - start))  # up to the last usable LBA (sectors - 34)
            spec="start=$start, size=$size, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=config-2"
            ;;
        dos)
            start=$(((sectors - CD_SECTORS) / 2048 * 2048))
            size=$((sectors - start))
            spec="start=$start, size=$size, type=83"
            ;;
        *) fail configdrive "the image on $dev has no partition table (MBR or GPT); cannot add a config drive partition" ;;
    esac
    out=$(echo "$spec" | sfdisk --append --no-reread --no-tell-kernel "$dev" 2>&1)
    rc=$?
    [ "$rc" -eq 0 ] || fail configdrive "adding the config drive partition ($spec) to $dev: $(echo "$out" | grep -iE 'error|fail|overlap|cannot|no free|too' | head -n 2 | tr '\n' ' ')"
    num=$(sfdisk -d "$dev" 2>/dev/null | awk -v s="$start" '$0 ~ "start= *"s"," { sub(/ .*/, "", $1); print $1 }' | sed 's/.*[^0-9]\([0-9][0-9]*\)$/\1/')
    [ -n "$num" ] || fail configdrive "the new partition at sector $start is not in $dev's table"
    dd if="$iso" of="$dev" bs=$MIB seek=$((start / 2048)) conv=notrunc 2>"$R/dd.err" ||
        fail configdrive "writing the config drive into $dev at sector $start: $(tail -n 1 "$R/dd.err")"
    used=$(((isz + MIB - 1) / MIB))
    total=$((size / 2048))
    if [ "$total" -gt "$used" ]; then
        dd if=/dev/zero of="$dev" bs=$MIB seek=$((start / 2048 + used)) count=$((total - used)) conv=notrunc 2>"$R/dd.err" ||
            fail configdrive "zeroing the rest of the config drive partition: $(tail -n 1 "$R/dd.err")"
    fi
    sync
    blockdev --flushbufs "$dev" 2>/dev/null
    blockdev --rereadpt "$dev" 2>"$R/reread.err" || partx -u "$dev" 2>>"$R/reread.err" ||
        fail configdrive "re-reading the partition table of $dev: $(cat "$R/reread.err")"
    p=
    i=0
    while [ $i -lt 30 ]; do
        for c in "$n$num" "${n}p$num"; do
            [ -e "/sys/block/$n/$c" ] && p=$c
        done
        [ -n "$p" ] && break
        sleep 0.1
        i=$((i + 1))
    done
    [ -n "$p" ] || fail configdrive "partition $num of $dev did not appear after re-reading the table"
    [ "$(iso_label "/dev/$p")" = config-2 ] || [ "$(iso_label "/dev/$p")" = CONFIG-2 ] ||
        fail configdrive "/dev/$p does not read back as the config-2 volume"
    CD_JSON="{\"partition\":\"/dev/$p\",\"number\":$num,\"table\":\"$label\",\"start_sector\":$start,\"sectors\":$size,\"iso_bytes\":$isz}"
}

# ---------------------------------------------------------------- benchmark mode
plain_dd() {
    wget -q -O- --header "X-Stemforge-Token: $SF_TOKEN" "$SF_IMAGE_URL" 2>"$R/plain.wget.err" |
        dd of="$1" bs=$MIB iflag=fullblock conv=notrunc 2>"$R/plain.dd.err"
}

bench() {
    local dev i t0 t1 tp tw first
    dev=$1
    i=1
    while [ "$i" -le "$SF_BENCH" ]; do
        for first in dd ours; do
            if { [ $((i % 2)) -eq 1 ] && [ $first = dd ]; } || { [ $((i % 2)) -eq 0 ] && [ $first = ours ]; }; then
                sync
                t0=$(now)
                plain_dd "$dev" || fail bench "plain dd: $(cat "$R/plain.wget.err" "$R/plain.dd.err")"
                sync
                t1=$(now)
                tp=$(elapsed "$t0" "$t1")
            else
                sync
                t0=$(now)
                stream_once "$dev" || fail bench "$ERR"
                sync
                t1=$(now)
                tw=$(elapsed "$t0" "$t1")
                [ "$GOT_SHA" = "$SF_IMAGE_SHA256" ] || fail bench "checksum mismatch in round $i"
            fi
        done
        post_event bench "round-$i" true "dd ${tp}s, ours ${tw}s" \
            "{\"round\":$i,\"bytes\":$SF_IMAGE_SIZE,\"dd_s\":$tp,\"ours_s\":$tw}"
        log "bench round $i: dd ${tp}s, ours ${tw}s"
        i=$((i + 1))
    done
}

# ---------------------------------------------------------------- main
deploy_main() {
    local t0 t1 secs dev
    case "${SF_DEPLOY_KIND:-whole-disk}" in
        whole-disk) ;;
        layout)
            . /sf/layout.sh
            layout_main
            ;;
        *) fail instructions "SF_DEPLOY_KIND must be whole-disk or layout, not '$SF_DEPLOY_KIND'" ;;
    esac
    echo disk-select >"$R/stage"
    [ -n "$SF_IMAGE_URL" ] || fail instructions "SF_IMAGE_URL is missing"
    [ -n "$SF_CONFIGDRIVE_URL" ] || fail instructions "SF_CONFIGDRIVE_URL is missing"
    SF_IMAGE_SHA256=$(echo "$SF_IMAGE_SHA256" | tr 'A-F' 'a-f')
    case "$SF_IMAGE_SHA256" in
        *[!0-9a-f]* | '') fail instructions "SF_IMAGE_SHA256 must be 64 hex digits" ;;
    esac
    [ ${#SF_IMAGE_SHA256} -eq 64 ] || fail instructions "SF_IMAGE_SHA256 must be 64 hex digits, not ${#SF_IMAGE_SHA256}"
    case "$SF_IMAGE_SIZE" in '' | *[!0-9]* | 0) fail instructions "SF_IMAGE_SIZE must be a positive byte count, not '$SF_IMAGE_SIZE'" ;; esac
    SF_IMAGE_FORMAT=${SF_IMAGE_FORMAT:-raw}
    case "$SF_IMAGE_FORMAT" in raw | gzip) ;; *) fail instructions "SF_IMAGE_FORMAT must be raw or gzip, not '$SF_IMAGE_FORMAT'" ;; esac
    [ -z "$SF_ROOT_HINTS" ] || log "root device hints: $SF_ROOT_HINTS"

    wait_disks 20 || fail disk-select "no disks found (modules: $(tr '\n' ' ' </etc/modules.load))"
    select_disk || fail disk-select "$ERR"
    dev=/dev/$ROOT
    if [ $((SF_IMAGE_SIZE + CD_SECTORS * 512 + MIB)) -gt "$(disk_bytes "$ROOT")" ]; then
        fail disk-select "the image ($SF_IMAGE_SIZE bytes) and the 64 MiB config drive do not fit on $dev ($(disk_bytes "$ROOT") bytes)"
    fi
    stage disk-selected "root disk $dev ($(($(disk_bytes "$ROOT") / MIB)) MiB)" "$(disk_json "$ROOT")"

    echo wipe >"$R/stage"
    wipe_disk "$ROOT" || fail wipe "$ERR"

    echo image >"$R/stage"
    t0=$(now)
    if ! stream_image "$dev"; then
        msg=$ERR
        wipe_disk "$ROOT" && msg="$msg (disk wiped)"
        fail image "$msg"
    fi
    sync
    blockdev --flushbufs "$dev" 2>/dev/null
    t1=$(now)
    secs=$(elapsed "$t0" "$t1")
    stage image-written "$BYTES bytes in ${secs}s ($(mibps "$BYTES" "$secs") MiB/s)" \
        "{\"bytes\":$BYTES,\"seconds\":$secs,\"mib_per_s\":$(mibps "$BYTES" "$secs"),\"format\":\"$SF_IMAGE_FORMAT\",\"sha256\":\"$GOT_SHA\",\"zeroed\":${ZEROED:-0}}"

    echo checksum >"$R/stage"
    if [ "$GOT_SHA" != "$SF_IMAGE_SHA256" ]; then
        wipe_disk "$ROOT"
        fail checksum "sha256 mismatch: the stream's sha256 is $GOT_SHA, SF_IMAGE_SHA256 is $SF_IMAGE_SHA256 (disk wiped)"
    fi
    stage checksum-ok "sha256 $GOT_SHA" "{\"sha256\":\"$GOT_SHA\"}"

    [ "$SF_BENCH" -gt 0 ] && bench "$dev"

    echo configdrive >"$R/stage"
    write_configdrive "$ROOT"
    stage configdrive-written "config drive in $(echo "$CD_JSON" | sed 's/.*"partition":"\([^"]*\)".*/\1/')" "$CD_JSON"

    echo finish >"$R/stage"
    sync
    stage done "deployed $SF_IMAGE_URL to $dev" "{\"device\":\"$dev\"}"
    post_event result done true "deployed to $dev; rebooting" "{\"device\":\"$dev\"}" 5 ||
        log "the result could not be reported; rebooting anyway"
    log "rebooting"
    sleep 1
    reboot -f
    stay_up
}
