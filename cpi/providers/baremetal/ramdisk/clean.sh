
# /sf/clean.sh of the stemforge deploy ramdisk (busybox sh), sourced by /init when SF_MODE=clean.
#
# First every md array and LVM volume group found on any disk is taken apart (storage_teardown, lib.sh: arrays
# assembled and VGs activated, the signatures inside every LV and md device wiped, VGs and PV labels removed,
# arrays stopped, their members' superblocks zeroed; listed in stage "done"'s data as "torn_down").  Then for every disk (see
# disk_list in lib.sh) the previous tenant's data must not survive where we know it lives:
# * md superblocks of arrays that could not be assembled (mdadm --zero-superblock on every partition and the disk);
# * every partition: the ext2/3/4 superblock and ALL its backup copies (ext_copies), then every signature
#   libblkid knows (wipefs -a: filesystems, md RAID superblocks at start or end, LVM labels in the first 4
#   sectors, swap, ...); a partition holding a config drive (ISO 9660 or VFAT labelled config-2) is zeroed
#   entirely (it holds the agent settings: env, message-bus and blobstore credentials);
# * the disk itself: the same for a filesystem on the whole disk, wipefs -a (partition tables, both GPT copies,
#   protective MBR), zeros over the first MiB and over the last CD_TAIL (the config-drive partition the deploy
#   puts over the last 64 MiB, even when the table pointing at it is already gone, plus the backup GPT);
# * with SF_ERASE=full (a plan's full erase) additionally the whole disk: discard where the device supports it
#   (blkdiscard), then BLKZEROOUT (blkdiscard -z: the device's write-zeroes/unmap when it has one, else the kernel
#   writes zeros), in chunks, with a stage "erase-progress" event per chunk;
# then it re-reads the partition table and VERIFIES by reading back (caches dropped): every zeroed region is
# zeros, libblkid finds no signature left on the disk nor in any region a partition had (blkid -p at its offset:
# filesystems, md superblocks, LVM labels), no partition table, no md superblock (mdadm --examine), and for a full erase samples spread over the disk are
# zeros.  Each disk reports stage "disk-wiped" with {"name","device","size",...,"erase","superblock_copies",
# "configdrives","md_superblocks","verified"}.  Then stage "done", a "result" event with ok=true and `poweroff -f`.  A failure
# reports result ok=false at stage "clean" naming the disk and what did not read back.

MIB=1048576
# util-linux's, by path: Debian's static busybox runs its own applet of that name (no -z) whatever PATH says
BLKDISCARD=/usr/sbin/blkdiscard
CD_TAIL=69206016  # 66 MiB: the config drive's 64 MiB partition, its alignment and the backup GPT
ERASE_SAMPLES=16

# le32 FILE OFFSET: the little-endian u32 at OFFSET of FILE.
le32() {
    od -An -tu4 -j "$2" -N 4 "$1" | tr -d ' \n'
}

# zeros DEV OFFSET_BYTES LENGTH_BYTES: true when the region reads back as zeros (MiB-aligned regions in MiB reads).
zeros() {
    local n
    if [ $(($2 % MIB)) -eq 0 ] && [ $(($3 % MIB)) -eq 0 ]; then
        n=$(dd if="$1" bs=$MIB skip=$(($2 / MIB)) count=$(($3 / MIB)) 2>/dev/null | tr -d '\000' | wc -c)
    else
        n=$(dd if="$1" bs=512 skip=$(($2 / 512)) count=$((($3 + 511) / 512)) 2>/dev/null | tr -d '\000' | wc -c)
    fi
    [ "$n" -eq 0 ]
}

# ext_copies DEV: zero the ext2/3/4 superblock of DEV (if any) and every backup copy (group 1 and the powers of
# 3, 5 and 7 with sparse_super; s_backup_bgs with sparse_super2; every group otherwise).  Appends the byte offsets
# zeroed ("offset:length") to $R/zeroed and adds to COPIES.  On failure ERR says why.
ext_copies() {
    local dev sb blocks first logbs bs bpg compat incompat rocompat groups g p b
    dev=$1
    sb=$R/sb
    dd if="$dev" of="$sb" bs=1024 skip=1 count=1 2>/dev/null || return 0
    [ "$(od -An -tx1 -j 56 -N 2 "$sb" | tr -d ' \n')" = 53ef ] || return 0
    blocks=$(le32 "$sb" 4)
    first=$(le32 "$sb" 20)
    logbs=$(le32 "$sb" 24)
    bpg=$(le32 "$sb" 32)
    compat=$(le32 "$sb" 92)
    incompat=$(le32 "$sb" 96)
    rocompat=$(le32 "$sb" 100)
    [ $((incompat & 0x80)) -ne 0 ] && blocks=$((blocks + ($(le32 "$sb" 336) << 32)))  # 64bit: s_blocks_count_hi
    if [ "$logbs" -gt 6 ] || [ "$bpg" -eq 0 ] || [ "$blocks" -le "$first" ]; then
        log "$dev: ext superblock with impossible geometry (log_block_size $logbs, blocks_per_group $bpg); zeroing the primary only"
        groups=1
    else
        groups=$(((blocks - first + bpg - 1) / bpg))
    fi
    bs=$((1024 << logbs))
    : >"$R/groups"
    if [ "$groups" -gt 1 ]; then
        if [ $((compat & 0x200)) -ne 0 ]; then  # sparse_super2: at most two backups, named in the superblock
            for g in $(le32 "$sb" 588) $(le32 "$sb" 592); do
                [ "$g" -gt 0 ] && [ "$g" -lt "$groups" ] && echo "$g" >>"$R/groups"
            done
        elif [ $((rocompat & 0x1)) -ne 0 ]; then  # sparse_super: groups 1 and powers of 3, 5, 7
            echo 1 >>"$R/groups"
            for b in 3 5 7; do
                p=$b
                while [ "$p" -lt "$groups" ]; do
                    echo "$p" >>"$R/groups"
                    p=$((p * b))
                done
            done
        else
            g=1
            while [ "$g" -lt "$groups" ]; do
                echo "$g" >>"$R/groups"
                g=$((g + 1))
            done
        fi
    fi
    # the primary (1 KiB at byte 1024), then one block at the start of every backup group
    dd if=/dev/zero of="$dev" bs=1024 seek=1 count=1 conv=notrunc 2>"$R/dd.err" ||
        { ERR="zeroing the ext superblock of $dev: $(tail -n 1 "$R/dd.err")"; return 1; }
    echo "$dev 1024:1024" >>"$R/zeroed"
    COPIES=$((COPIES + 1))
    for g in $(sort -n -u "$R/groups"); do
        b=$((first + g * bpg))
        dd if=/dev/zero of="$dev" bs="$bs" seek="$b" count=1 conv=notrunc 2>"$R/dd.err" ||
            { ERR="zeroing the ext superblock copy of group $g of $dev (block $b): $(tail -n 1 "$R/dd.err")"; return 1; }
        echo "$dev $((b * bs)):$bs" >>"$R/zeroed"
        COPIES=$((COPIES + 1))
    done
    log "$dev: ext superblock and its $(sort -n -u "$R/groups" | wc -l) backup copies zeroed (block size $bs, $groups groups)"
    return 0
}

# is_configdrive DEV: DEV holds an ISO 9660 or VFAT volume labelled config-2.
is_configdrive() {
    local label off
    label=$(iso_label "$1")
    case "$label" in config-2 | CONFIG-2) return 0 ;; esac
    # VFAT: the volume label at 43 (FAT12/16) or 71 (FAT32) of the boot sector
    for off in 43 71; do
        label=$(dd if="$1" bs=1 skip=$off count=11 2>/dev/null | tr -d ' \000')
        case "$label" in config-2 | CONFIG-2) return 0 ;; esac
    done
    return 1
}

iso_label() {
    dd if="$1" bs=1 skip=32808 count=32 2>/dev/null | tr -d ' \000'
}

# zero_all DEV: BLKZEROOUT over the whole of DEV (a partition or a disk); the kernel uses the device's
# write-zeroes (with unmap) when it has one, else writes zeros.
zero_all() {
    "$BLKDISCARD" -z "$1" 2>"$R/zero.err" || { ERR="zeroing $1: $(cat "$R/zero.err")"; return 1; }
    echo "$1 0:$(blockdev --getsize64 "$1")" >>"$R/zeroed"
}

# full_erase NAME: the whole disk, in chunks: discard (when the device supports it; errors ignored: some devices
# announce it and refuse), then BLKZEROOUT; one "erase-progress" event per chunk.  Sets METHOD.
full_erase() {
    local n dev total chunk off len discard
    n=$1
    dev=/dev/$n
    total=$(disk_bytes "$n")
    chunk=$((total / 8 / MIB * MIB))
    [ "$chunk" -lt $((256 * MIB)) ] && chunk=$((256 * MIB))
    discard=false
    [ "$(cat "/sys/block/$n/queue/discard_max_bytes" 2>/dev/null || echo 0)" -gt 0 ] && discard=true
    METHOD=zeroout
    $discard && METHOD=discard+zeroout
    off=0
    while [ "$off" -lt "$total" ]; do
        len=$chunk
        [ $((off + len)) -gt "$total" ] && len=$((total - off))
        $discard && { "$BLKDISCARD" -o "$off" -l "$len" "$dev" 2>/dev/null || METHOD=zeroout; }
        "$BLKDISCARD" -z -o "$off" -l "$len" "$dev" 2>"$R/zero.err" ||
            { ERR="zeroing $dev bytes $off-$((off + len)): $(cat "$R/zero.err")"; return 1; }
        off=$((off + len))
        stage erase-progress "$dev: $((off / MIB)) of $((total / MIB)) MiB erased ($((off * 100 / total))%)" \
            "{\"device\":\"$dev\",\"done_bytes\":$off,\"total_bytes\":$total,\"percent\":$((off * 100 / total)),\"method\":\"$METHOD\"}"
    done
    return 0
}

# clean_disk NAME: everything above for one disk; sets COPIES, CDS (config drives zeroed), METHOD.
clean_disk() {
    local n dev p sectors bytes head tail i off
    n=$1
    dev=/dev/$n
    ERR=
    COPIES=0
    CDS=
    METHOD=
    : >"$R/zeroed"
    MD_ZEROED=0
    md_zero_all "$n" || return 1
    for p in $(disk_partitions "$n"); do
        if is_configdrive "/dev/$p"; then
            zero_all "/dev/$p" || return 1
            CDS="$CDS /dev/$p"
            log "/dev/$p: config drive zeroed ($(($(blockdev --getsize64 "/dev/$p") / MIB)) MiB)"
        fi
        ext_copies "/dev/$p" || return 1
        wipefs -a -f "/dev/$p" >/dev/null 2>"$R/wipefs.err" || { ERR="wipefs /dev/$p: $(cat "$R/wipefs.err")"; return 1; }
    done
    ext_copies "$dev" || return 1
    wipefs -a -f "$dev" >/dev/null 2>"$R/wipefs.err" || { ERR="wipefs $dev: $(cat "$R/wipefs.err")"; return 1; }
    sectors=$(disk_sectors "$n")
    bytes=$((sectors * 512))
    head=$MIB
    [ "$bytes" -lt "$head" ] && head=$bytes
    tail=$CD_TAIL
    [ "$bytes" -lt "$tail" ] && tail=$bytes
    "$BLKDISCARD" -z -o 0 -l "$head" "$dev" 2>"$R/zero.err" ||
        { ERR="zeroing the first MiB of $dev: $(cat "$R/zero.err")"; return 1; }
    "$BLKDISCARD" -z -o $((bytes - tail)) -l "$tail" "$dev" 2>"$R/zero.err" ||
        { ERR="zeroing the last $((tail / MIB)) MiB of $dev: $(cat "$R/zero.err")"; return 1; }
    echo "$dev 0:$head" >>"$R/zeroed"
    echo "$dev $((bytes - tail)):$tail" >>"$R/zeroed"
    if [ "$SF_ERASE" = full ]; then
        full_erase "$n" || return 1
    fi
    sync
    blockdev --rereadpt "$dev" 2>/dev/null || partx -d "$dev" 2>/dev/null
    verify_disk "$n"
}

# verify_disk NAME: read back (caches dropped) every region zeroed on this disk (partitions are gone now: their
# regions are checked through the disk at the partition's old start), no signature left, full-erase samples.
verify_disk() {
    local n dev line what region off len start i bytes step
    n=$1
    dev=/dev/$n
    blockdev --flushbufs "$dev" 2>/dev/null
    echo 3 >/proc/sys/vm/drop_caches 2>/dev/null
    while read -r what region; do
        off=${region%%:*}
        len=${region#*:}
        start=0
        if [ "$what" != "$dev" ]; then
            start=$(cat "$R/start.${what##*/}" 2>/dev/null || echo)
            [ -n "$start" ] || { ERR="verify: no recorded start of $what"; return 1; }
        fi
        zeros "$dev" $((start + off)) "$len" ||
            { ERR="verify: $what bytes $off+$len did not read back as zeros"; return 1; }
    done <"$R/zeroed"
    line=$(wipefs "$dev" 2>/dev/null | sed -n 2p)
    [ -z "$line" ] || { ERR="verify: a signature is left on $dev: $line"; return 1; }
    blockdev --rereadpt "$dev" 2>/dev/null
    [ -z "$(disk_partitions "$n")" ] || { ERR="verify: $dev still has partitions: $(disk_partitions "$n" | tr '\n' ' ')"; return 1; }
    sfdisk -d "$dev" >/dev/null 2>&1 && { ERR="verify: $dev still has a partition table"; return 1; }
    # where the partitions were: libblkid finds no filesystem, md superblock (1.2 at 4 KiB, 1.0/0.90 at the end)
    # or LVM label in any of them
    for f in "$R"/start."$n"*; do
        [ -e "$f" ] || continue
        p=${f##*/start.}
        line=$(blkid -p -o udev -O "$(cat "$f")" -S "$(cat "$R/size.$p")" "$dev" 2>/dev/null | grep -E '^ID_(FS|PART_TABLE)_TYPE=' | head -n 1)
        [ -z "$line" ] || { ERR="verify: where /dev/$p was, a signature is left ($line)"; return 1; }
    done
    mdadm --examine --scan "$dev" 2>/dev/null | grep -q ARRAY && { ERR="verify: an md superblock is left on $dev"; return 1; }
    if [ "$SF_ERASE" = full ]; then
        bytes=$(disk_bytes "$n")
        step=$((bytes / MIB / ERASE_SAMPLES))
        i=0
        while [ "$i" -lt "$ERASE_SAMPLES" ]; do
            zeros "$dev" $((i * step * MIB)) $MIB || { ERR="verify: $dev MiB $((i * step)) is not zeros after the full erase"; return 1; }
            i=$((i + 1))
        done
    fi
    return 0
}

clean_main() {
    local n count p
    echo clean >"$R/stage"
    SF_ERASE=${SF_ERASE:-metadata}
    case "$SF_ERASE" in metadata | full) ;; *) fail instructions "SF_ERASE must be metadata or full, not '$SF_ERASE'" ;; esac
    wait_disks 20 || log "no disks found"
    storage_teardown || fail clean "tearing down the previous tenant's arrays and volume groups: $ERR"
    [ -z "$TEARDOWN" ] || log "torn down:$TEARDOWN"
    [ -z "$(md_devices)" ] || fail clean "md arrays still running after the teardown: $(md_devices | tr '\n' ' ')"
    count=0
    for n in $(disk_list); do
        for p in $(disk_partitions "$n"); do
            echo $(($(cat "/sys/block/$n/$p/start") * 512)) >"$R/start.$p"
            echo $(($(cat "/sys/block/$n/$p/size") * 512)) >"$R/size.$p"
        done
        clean_disk "$n" || fail clean "disk /dev/$n: $ERR"
        sync
        stage disk-wiped "wiped /dev/$n ($(($(disk_bytes "$n") / MIB)) MiB, $SF_ERASE erase, $COPIES ext superblock(s), verified)" \
            "$(disk_json "$n" | sed 's/}$//'),\"erase\":\"$SF_ERASE\",\"method\":\"${METHOD:-metadata}\",\"superblock_copies\":$COPIES,\"configdrives\":$(echo "$CDS" | wc -w),\"md_superblocks\":$MD_ZEROED,\"verified\":true}"
        count=$((count + 1))
    done
    echo finish >"$R/stage"
    stage done "cleaned $count disk(s)" "{\"disks\":$count,\"torn_down\":\"$(jesc "${TEARDOWN# }")\"}"
    post_event result done true "cleaned $count disk(s); powering off" "{\"disks\":$count}" 5 ||
        log "the result could not be reported; powering off anyway"
    log "powering off"
    sleep 1
    poweroff -f
    stay_up
}
