# /sf/layout.sh of the stemforge deploy ramdisk (busybox sh), sourced by deploy.sh when SF_DEPLOY_KIND=layout:
# the file-based deploy of a cloud image onto a storage layout (GPT partitions, md RAID 0/1/10, LVM, ext4/xfs/vfat/
# swap), as OVHcloud's installer for cloud images and Ironic's software RAID do it (ironic-python-agent's
# raid_utils.py / efi_utils.py, image_extension "manage_uefi"; OVHcloud's bringyourownimage).
#
# 1. POST every disk (disk_json) to $SF_API/layout; the answer is one line SF_LAYOUT_ERROR='...' (fails stage
#    layout) or the lay_* lines of the project's grammar (spec section 2), each checked against a whitelist regexp
#    (LAY_LINE_RE) before the file is sourced; the last line must be lay_go.  Sourcing only records the plan
#    (files under $R/lay); nothing is written before the whole answer has been read and cross-checked (every id
#    known, the disks present, the boot mode the firmware's, one `/` of SF_ROOTFS_FSTYPE).
# 2. Stage disk-selected (the disks and their roles), then every layout disk is wiped (arrays/VGs found on it
#    torn down, md superblocks, signatures, both GPT copies, first/last MiB), partitioned (sfdisk, GPT, 1 MiB
#    aligned, the config-2 partition last on its disk over its last 64 MiB), arrays created (mdadm, metadata 1.2,
#    --bitmap=internal but for RAID 0, --run; resync not waited for: it is throttled during the deploy and runs
#    once the first boot is done, lay_resync_after_boot), VGs and LVs (lvm without udev) -> stage layout-built.
# 3. The image's root filesystem (SF_ROOTFS_FORMAT=raw: SF_ROOTFS_URL bytes SF_ROOTFS_OFFSET.. +SF_ROOTFS_SIZE, a
#    Range GET; gzip: all of SF_ROOTFS_URL, inflating to SF_ROOTFS_SIZE bytes: the partition shrunk to its minimum
#    at create_stemcell) is streamed through sfwrite onto the `/` device (sha256 on the stream as served, zero blocks
#    skipped) -> rootfs-written; the digest
#    must be SF_ROOTFS_SHA256 -> checksum-ok; e2fsck -fy and resize2fs grow it to the device.
# 4. The other filesystems are made (mkfs; e2fsprogs' mke2fs and util-linux's mkswap by path: Debian's static
#    busybox sh runs its own applets of those names whatever PATH says), the target mounted at /target and the image's files under each other
#    mount point moved into its new filesystem; /etc/fstab (by UUID, swap, the ESP at /boot/efi) and
#    /etc/mdadm/mdadm.conf (mdadm --detail --scan + POLICY action=re-add) and, for mirrors, the first-boot resync
#    cap and its one-shot unit written; update-initramfs -u -k all in a
#    chroot (/dev /proc /sys /run bound; efivarfs when the firmware is UEFI) unless the image's initrd is already
#    current for the layout (initramfs_current) -> target-configured.  The image must
#    hold what the layout needs (mdadm for RAID, lvm2 for LVM, update-initramfs, GRUB for the boot mode), else
#    stage target fails naming what is missing.
# 5. GRUB in the chroot: BIOS: grub-install --target=i386-pc on EVERY disk holding `/`; UEFI: grub-install
#    --target=x86_64-efi --removable --no-nvram into /boot/efi, its files copied to every other ESP (kept
#    identical), a boot entry per ESP (efibootmgr -c) when efivars exist; update-grub unless the image's grub.cfg
#    already finds and boots / by the streamed filesystem's UUID (grub_cfg_current) -> bootloader-installed.
# 6. The config drive (deploy.sh's fetch_configdrive checks) into its partition, read back -> configdrive-written
#    -> done, result ok=true, reboot.
# Failure stages: layout, rootfs, checksum, target, bootloader, configdrive.  A failure after the disks were
# touched wipes the layout disks' boot code and ESPs (no half-deployed disk can boot), then reports.

LAY=$R/lay
TARGET=/target
CR_SECTORS=131072  # the config drive's 64 MiB
GUID_ESP=C12A7328-F81F-11D2-BA4B-00A0C93EC93B
GUID_BIOS=21686148-6449-6E6F-744E-656564454649
GUID_RAID=A19D880F-05FC-4D3B-A006-743F0F84911E
GUID_LVM=E6D6D379-F507-44C2-A23C-238F2A3DF928
GUID_SWAP=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F
GUID_LINUX=0FC63DAF-8483-4772-8E79-3D69D8477DE4

# The whitelist: every answer line is one of these (ids as layout.py's schema allows them, mount points absolute
# paths of plain characters); quoting as instructions.shell_quote writes it (no quote can appear in these args).
LAY_ID="'[a-z][a-z0-9_-]{0,31}'"
LAY_LINE_RE="^(lay_boot_mode '(uefi|bios)'|lay_disk $LAY_ID '[a-z][a-z0-9]{0,31}'|lay_part $LAY_ID '[0-9]{1,3}' $LAY_ID '([0-9]{1,9}|fill)' '(esp|bios_grub|raid|lvm|linux|swap)'|lay_configdrive $LAY_ID '[0-9]{1,3}'|lay_raid $LAY_ID '(0|1|10)'( $LAY_ID)+|lay_vg $LAY_ID( $LAY_ID)+|lay_lv $LAY_ID $LAY_ID '([0-9]{1,9}|fill)'|lay_fs $LAY_ID '(ext4|xfs|vfat|swap)' '(-|/|(/[A-Za-z0-9_.+-]+)+)'|lay_esp( $LAY_ID)+|lay_go)\$"

# ---------------------------------------------------------------- the grammar (record only)
lay_boot_mode() { echo "$1" >"$LAY/mode"; }
lay_disk() { echo "$1 $2" >>"$LAY/disks"; }
lay_part() { echo "$1 $2 $3 $4 $5" >>"$LAY/parts"; }
lay_configdrive() { echo "$1 $2" >"$LAY/cd"; }
lay_raid() {
    local id level
    id=$1 level=$2
    shift 2
    echo "$id $level $*" >>"$LAY/raids"
}
lay_vg() {
    local id
    id=$1
    shift
    echo "$id $*" >>"$LAY/vgs"
}
lay_lv() { echo "$1 $2 $3" >>"$LAY/lvs"; }
lay_fs() { echo "$1 $2 $3" >>"$LAY/fs"; }
lay_esp() { echo "$*" >"$LAY/esps"; }
lay_go() { echo go >"$LAY/go"; }

# dev_of ID: the device path of a layout id (after it was made); empty when unknown.
dev_of() { sed -n "s/^$1 //p" "$LAY/devs" 2>/dev/null | head -n 1; }
kname_of() { sed -n "s/^$1 //p" "$LAY/disks" | head -n 1; }

# lay_fail STAGE MESSAGE: undo the mounts, make sure nothing half-deployed boots (the MBR boot code of every
# layout disk and every ESP's filesystem signature wiped; the partition tables, arrays and volume groups stay for
# the cleaning to find and take apart), report.
lay_fail() {
    local k msg id
    msg=$2
    target_umount
    if [ -s "$LAY/touched" ]; then
        for k in $(cut -d' ' -f2 "$LAY/disks"); do
            dd if=/dev/zero of="/dev/$k" bs=440 count=1 conv=notrunc,fsync 2>/dev/null
        done
        for id in $(cat "$LAY/esps" 2>/dev/null); do
            [ -n "$(dev_of "$id")" ] && wipefs -a -f "$(dev_of "$id")" >/dev/null 2>&1
        done
        msg="$msg (boot code and ESPs of the layout disks wiped: nothing half-deployed boots)"
    fi
    raid_speed restore
    fail "$1" "$msg"
}

# ---------------------------------------------------------------- 1. the answer
lay_fetch() {
    local bad
    rm -rf "$LAY"
    mkdir -p "$LAY"
    : >"$LAY/disks"; : >"$LAY/parts"; : >"$LAY/raids"; : >"$LAY/vgs"; : >"$LAY/lvs"; : >"$LAY/fs"; : >"$LAY/devs"
    post_for "$SF_API/layout" "{\"disks\":$(disks_json)}" "$R/layout.answer" || fail layout "$ERR"
    if grep -q '^SF_LAYOUT_ERROR=' "$R/layout.answer"; then
        bad=$(grep -Ev "^SF_LAYOUT_ERROR='([^']|'\\\\'')*'\$" "$R/layout.answer" | grep -v '^$' | head -n 1)
        [ -z "$bad" ] || fail layout "malformed layout answer line: $(printf '%s' "$bad" | cut -c1-100)"
        SF_LAYOUT_ERROR=
        . "$R/layout.answer"
        fail layout "$SF_LAYOUT_ERROR"
    fi
    bad=$(grep -Ev "$LAY_LINE_RE" "$R/layout.answer" | head -n 1)
    [ -z "$bad" ] && [ -s "$R/layout.answer" ] || fail layout "malformed layout answer line (nothing written): $(printf '%s' "${bad:-<empty answer>}" | cut -c1-100)"
    [ "$(tail -n 1 "$R/layout.answer")" = lay_go ] || fail layout "the layout answer does not end with lay_go (incomplete; nothing written)"
    [ "$(grep -c '^lay_go$' "$R/layout.answer")" = 1 ] || fail layout "the layout answer has more than one lay_go"
    . "$R/layout.answer"
    log "layout answer: $(wc -l <"$R/layout.answer") lines"
}

# lay_check: cross-check the recorded plan before anything is written.
lay_check() {
    local id k n fw root ids
    [ -s "$LAY/mode" ] || fail layout "the layout answer has no lay_boot_mode"
    [ -s "$LAY/disks" ] || fail layout "the layout answer has no lay_disk"
    [ -s "$LAY/cd" ] || fail layout "the layout answer has no lay_configdrive"
    fw=bios
    [ -d /sys/firmware/efi ] && fw=uefi
    [ "$(cat "$LAY/mode")" = "$fw" ] || fail layout "the layout is for $(cat "$LAY/mode") but this server booted $fw"
    while read -r id k; do
        disk_list | grep -qx "$k" || fail layout "layout disk $id is $k, which is not one of the disks: $(disk_list | tr '\n' ' ')"
    done <"$LAY/disks"
    [ "$(cut -d' ' -f2 "$LAY/disks" | sort | uniq -d)" = "" ] || fail layout "a disk is named twice in the layout"
    ids=$(cut -d' ' -f1 "$LAY/disks")
    while read -r id n pid _; do
        echo "$ids" | grep -qx "$id" || fail layout "partition $pid is on $id, which is no lay_disk"
    done <"$LAY/parts"
    ids="$(cut -d' ' -f3 "$LAY/parts")
$(cut -d' ' -f1 "$LAY/raids")
$(cut -d' ' -f2 "$LAY/lvs")"
    [ "$(echo "$ids" | grep -v '^$' | sort | uniq -d)" = "" ] || fail layout "a device id is used twice: $(echo "$ids" | sort | uniq -d | tr '\n' ' ')"
    for id in $(cut -d' ' -f3- "$LAY/raids") $(cut -d' ' -f2- "$LAY/vgs") $(cut -d' ' -f1 "$LAY/fs") $(cat "$LAY/esps" 2>/dev/null); do
        echo "$ids" | grep -qx "$id" || fail layout "the layout names device $id, which no lay_part/lay_raid/lay_lv makes"
    done
    for id in $(cut -d' ' -f1 "$LAY/lvs"); do
        cut -d' ' -f1 "$LAY/vgs" | grep -qx "$id" || fail layout "a logical volume is in $id, which is no lay_vg"
    done
    echo "$(cut -d' ' -f1 "$LAY/disks")" | grep -qx "$(cut -d' ' -f1 "$LAY/cd")" || fail layout "the config drive is on $(cut -d' ' -f1 "$LAY/cd"), which is no lay_disk"
    [ "$(awk '$3 == "/"' "$LAY/fs" | wc -l)" = 1 ] || fail layout "the layout must mount exactly one filesystem at /"
    root=$(awk '$3 == "/" { print $1 " " $2 }' "$LAY/fs")
    [ "${root#* }" = "$SF_ROOTFS_FSTYPE" ] ||
        fail layout "/ is ${root#* } in the layout but the image's root filesystem is $SF_ROOTFS_FSTYPE"
    ROOT_ID=${root%% *}
}

# lay_roles_json: the disks and their roles (partitions with types, config drive) for stage disk-selected.
lay_roles_json() {
    local id k sep roles
    sep=
    printf '{"mode":"%s","disks":[' "$(cat "$LAY/mode")"
    while read -r id k; do
        roles=$(awk -v d="$id" '$1 == d { printf "%s\"%s:%s\"", (n++ ? "," : ""), $3, $5 }' "$LAY/parts")
        [ "$(cut -d' ' -f1 "$LAY/cd")" = "$id" ] && roles="$roles${roles:+,}\"configdrive\""
        printf '%s{"id":"%s","name":"%s","device":"/dev/%s","size":%s,"serial":"%s","roles":[%s]}' \
            "$sep" "$id" "$k" "$k" "$(disk_bytes "$k")" "$(jesc "$(disk_serial "$k")")" "$roles"
        sep=,
    done <"$LAY/disks"
    printf ']}'
}

# ---------------------------------------------------------------- 2. build the layout
# raid_speed cap|restore: keep md resync out of the deploy's way (md's speed_limit_min/max, KiB/s).
raid_speed() {
    local f=/proc/sys/dev/raid
    [ -e "$f/speed_limit_max" ] || return 0
    if [ "$1" = cap ]; then
        [ -e "$R/raid-speed" ] || echo "$(cat $f/speed_limit_min) $(cat $f/speed_limit_max)" >"$R/raid-speed"
        echo 1 >$f/speed_limit_min
        echo 1 >$f/speed_limit_max
    elif [ -e "$R/raid-speed" ]; then
        read -r lo hi <"$R/raid-speed"
        echo "$hi" >$f/speed_limit_max
        echo "$lo" >$f/speed_limit_min
        rm -f "$R/raid-speed"
    fi
}

# lay_wipe: only the layout's disks (nothing is assembled in the ramdisk: no udev; other disks stay untouched):
# md superblocks on every partition and the disk, then wipe_disk (signatures incl. LVM labels, both GPT copies,
# first/last MiB).
lay_wipe() {
    local id k
    while read -r id k; do
        MD_ZEROED=0
        md_zero_all "$k" || lay_fail layout "$ERR"
        wipe_disk "$k" || lay_fail layout "wiping /dev/$k: $ERR"
    done <"$LAY/disks"
}

# part_dev KNAME NUM: wait (3 s) for partition NUM of KNAME; prints /dev/<name>.
part_dev() {
    local i c
    i=0
    while [ $i -lt 30 ]; do
        for c in "$1$2" "${1}p$2"; do
            [ -e "/sys/block/$1/$c" ] && [ -b "/dev/$c" ] && { echo "/dev/$c"; return 0; }
        done
        sleep 0.1
        i=$((i + 1))
    done
    return 1
}

# lay_partition ID KNAME: the GPT of one disk (sizes in MiB from sector 2048; fill = what the sized ones and the
# config drive leave; the config-2 partition over the last 64 MiB up to the last usable LBA).
lay_partition() {
    local id k sectors end cdstart sized fill start size num pid sz type guid out cdnum p
    id=$1 k=$2
    sectors=$(disk_sectors "$k")
    end=$(((sectors - 33) / 2048 * 2048))  # 1 MiB aligned end of the usable area
    cdstart=$end
    cdnum=
    if [ "$(cut -d' ' -f1 "$LAY/cd")" = "$id" ]; then
        cdstart=$(((sectors - 34 - CR_SECTORS) / 2048 * 2048))
        cdnum=$(cut -d' ' -f2 "$LAY/cd")
    fi
    sized=$(awk -v d="$id" '$1 == d && $4 != "fill" { s += $4 } END { print s + 0 }' "$LAY/parts")
    fill=$(((cdstart - 2048) / 2048 - sized))
    [ "$fill" -ge 0 ] || lay_fail layout "the partitions of $id need $sized MiB, /dev/$k has $(((cdstart - 2048) / 2048)) MiB (config drive apart)"
    printf 'label: gpt\nunit: sectors\nfirst-lba: 2048\n' >"$LAY/sfdisk.$id"
    start=2048
    while read -r d num pid sz type; do
        [ "$d" = "$id" ] || continue
        [ "$sz" = fill ] && sz=$fill
        size=$((sz * 2048))
        case "$type" in
            esp) guid=$GUID_ESP ;; bios_grub) guid=$GUID_BIOS ;; raid) guid=$GUID_RAID ;;
            lvm) guid=$GUID_LVM ;; swap) guid=$GUID_SWAP ;; *) guid=$GUID_LINUX ;;
        esac
        echo "$num : start=$start, size=$size, type=$guid, name=$pid" >>"$LAY/sfdisk.$id"
        start=$((start + size))
    done <"$LAY/parts"
    [ -n "$cdnum" ] && echo "$cdnum : start=$cdstart, size=$((sectors - 33 - cdstart)), type=$GUID_LINUX, name=config-2" >>"$LAY/sfdisk.$id"
    out=$(sfdisk -q --wipe always --wipe-partitions always "/dev/$k" <"$LAY/sfdisk.$id" 2>&1) ||
        lay_fail layout "partitioning /dev/$k: $(echo "$out" | tail -n 3 | tr '\n' ' ')"
    blockdev --rereadpt "/dev/$k" 2>/dev/null || partx -u "/dev/$k" 2>/dev/null
    while read -r d num pid _; do
        [ "$d" = "$id" ] || continue
        p=$(part_dev "$k" "$num") || lay_fail layout "partition $num of /dev/$k ($pid) did not appear"
        wipefs -a -f "$p" >/dev/null 2>&1
        echo "$pid $p" >>"$LAY/devs"
    done <"$LAY/parts"
    if [ -n "$cdnum" ]; then
        CD_DEV=$(part_dev "$k" "$cdnum") || lay_fail layout "the config drive partition $cdnum of /dev/$k did not appear"
        CD_START=$cdstart
    fi
}

lay_raids() {
    local id level members devs m d out i bitmap
    while read -r id level members; do
        devs=
        for m in $members; do
            d=$(dev_of "$m")
            [ -n "$d" ] || lay_fail layout "array $id: member $m is not made yet"
            devs="$devs $d"
        done
        raid_speed cap
        bitmap=--bitmap=internal
        [ "$level" = 0 ] && bitmap= # RAID 0 has nothing to resync: mdadm refuses a bitmap for it
        out=$(mdadm --create "/dev/md/$id" --run --metadata=1.2 $bitmap --homehost=any --name="$id" \
            --level="$level" --raid-devices=$(echo "$members" | wc -w) $devs 2>&1) ||
            lay_fail layout "mdadm --create /dev/md/$id (RAID $level on$devs): $(echo "$out" | tail -n 2 | tr '\n' ' ')"
        i=0
        while [ ! -b "/dev/md/$id" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
        [ -b "/dev/md/$id" ] || lay_fail layout "/dev/md/$id did not appear after mdadm --create"
        echo "$id $(readlink -f "/dev/md/$id")" >>"$LAY/devs"
        log "array /dev/md/$id: RAID $level on$devs"
    done <"$LAY/raids"
}

lay_lvm() {
    local vg pvs p d devs lv size out
    while read -r vg pvs; do
        devs=
        for p in $pvs; do
            d=$(dev_of "$p")
            [ -n "$d" ] || lay_fail layout "volume group $vg: $p is not made yet"
            devs="$devs $d"
        done
        out=$(lvmc pvcreate -ff -y $devs 2>&1) || lay_fail layout "pvcreate$devs: $(echo "$out" | tail -n 2 | tr '\n' ' ')"
        out=$(lvmc vgcreate -y "$vg" $devs 2>&1) || lay_fail layout "vgcreate $vg$devs: $(echo "$out" | tail -n 2 | tr '\n' ' ')"
    done <"$LAY/vgs"
    while read -r vg lv size; do
        if [ "$size" = fill ]; then size="-l 100%FREE"; else size="-L ${size}m"; fi
        out=$(lvmc lvcreate -y -W y -Z y $size -n "$lv" "$vg" 2>&1) ||
            lay_fail layout "lvcreate $vg/$lv ($size): $(echo "$out" | tail -n 2 | tr '\n' ' ')"
        [ -b "/dev/$vg/$lv" ] || lvmc vgmknodes "$vg" >/dev/null 2>&1
        [ -b "/dev/$vg/$lv" ] || lay_fail layout "/dev/$vg/$lv did not appear after lvcreate"
        echo "$lv /dev/$vg/$lv" >>"$LAY/devs"
    done <"$LAY/lvs"
}

lay_build() {
    local id k
    lay_wipe
    echo touched >"$LAY/touched"
    while read -r id k; do
        lay_partition "$id" "$k"
    done <"$LAY/disks"
    lay_raids
    lay_lvm
    ROOT_DEV=$(dev_of "$ROOT_ID")
    [ -n "$ROOT_DEV" ] || lay_fail layout "the / device $ROOT_ID was not made"
    ROOT_BYTES=$(blockdev --getsize64 "$ROOT_DEV")
    [ "$ROOT_BYTES" -ge "$SF_ROOTFS_SIZE" ] ||
        lay_fail layout "the / device $ROOT_ID ($ROOT_DEV, $ROOT_BYTES bytes) is smaller than the image's root filesystem ($SF_ROOTFS_SIZE bytes)"
}

# ---------------------------------------------------------------- 3. the root filesystem
lay_rootfs() {
    local t0 t1 secs out rc
    echo rootfs >"$R/stage"
    SF_IMAGE_URL=$SF_ROOTFS_URL SF_IMAGE_SIZE=$SF_ROOTFS_SIZE SF_IMAGE_FORMAT=$SF_ROOTFS_FORMAT
    # raw: the partition's bytes of the disk image (a Range); gzip: a file of its own, inflated by sfwrite
    SF_IMAGE_OFFSET=$SF_ROOTFS_OFFSET
    [ "$SF_ROOTFS_FORMAT" = gzip ] && SF_IMAGE_OFFSET=
    t0=$(now)
    stream_image "$ROOT_DEV" || lay_fail rootfs "$ERR"
    sync
    t1=$(now)
    secs=$(elapsed "$t0" "$t1")
    stage rootfs-written "$BYTES bytes onto $ROOT_DEV in ${secs}s ($(mibps "$BYTES" "$secs") MiB/s)" \
        "{\"device\":\"$ROOT_DEV\",\"bytes\":$BYTES,\"offset\":$SF_ROOTFS_OFFSET,\"seconds\":$secs,\"mib_per_s\":$(mibps "$BYTES" "$secs"),\"sha256\":\"$GOT_SHA\",\"zeroed\":${ZEROED:-0}}"
    echo checksum >"$R/stage"
    [ "$GOT_SHA" = "$SF_ROOTFS_SHA256" ] ||
        lay_fail checksum "sha256 mismatch: the stream's sha256 is $GOT_SHA, SF_ROOTFS_SHA256 is $SF_ROOTFS_SHA256"
    stage checksum-ok "sha256 $GOT_SHA" "{\"sha256\":\"$GOT_SHA\"}"
    echo rootfs >"$R/stage"
    out=$(e2fsck -fy "$ROOT_DEV" 2>&1)
    rc=$?
    [ "$rc" -lt 4 ] || lay_fail rootfs "e2fsck -fy $ROOT_DEV (status $rc): $(echo "$out" | tail -n 3 | tr '\n' ' ')"
    out=$(resize2fs "$ROOT_DEV" 2>&1) || lay_fail rootfs "resize2fs $ROOT_DEV: $(echo "$out" | tail -n 2 | tr '\n' ' ')"
    log "root filesystem on $ROOT_DEV grown to $(($(blockdev --getsize64 "$ROOT_DEV") / MIB)) MiB"
}

# ---------------------------------------------------------------- 4. the target
lay_mkfs() {
    local id fs mnt dev out
    while read -r id fs mnt; do
        [ "$id" = "$ROOT_ID" ] && continue
        dev=$(dev_of "$id")
        case "$fs" in
            ext4) out=$(/usr/sbin/mke2fs -F -q -t ext4 "$dev" 2>&1) ;;
            xfs) out=$(mkfs.xfs -f -q "$dev" 2>&1) ;;
            vfat)  # FAT32 (what firmware expects of an ESP) needs 65525 clusters: from 64 MiB on; smaller ones FAT16
                if [ "$(blockdev --getsize64 "$dev")" -ge $((64 * MIB)) ]; then
                    out=$(mkfs.fat -F 32 -n EFI "$dev" 2>&1)
                else
                    out=$(mkfs.fat -n EFI "$dev" 2>&1)
                fi
                ;;
            swap) out=$(/usr/sbin/mkswap "$dev" 2>&1) ;;
        esac || lay_fail target "mkfs $fs on $dev ($id): $(echo "$out" | tail -n 2 | tr '\n' ' ')"
    done <"$LAY/fs"
}

# target_umount: undo every mount under /target (deepest first); ignores what is not mounted.
target_umount() {
    local m
    for m in $(awk -v t="$TARGET" '$2 == t || index($2, t "/") == 1 { print $2 }' /proc/mounts | sort -r); do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
    done
    umount "$R/move" 2>/dev/null
    umount "$R/esp" 2>/dev/null
}

# lay_mount: / at /target, then every other filesystem by depth; the image's files under a mount point are moved
# into the new filesystem first (cp -a, then removed from below it).
lay_mount() {
    local id fs mnt dev out
    mkdir -p "$TARGET" "$R/move"
    out=$(mount -t "$SF_ROOTFS_FSTYPE" "$ROOT_DEV" "$TARGET" 2>&1) || lay_fail target "mounting $ROOT_DEV at $TARGET: $out"
    while read -r id fs mnt; do
        case "$mnt" in / | -) continue ;; esac
        dev=$(dev_of "$id")
        out=$(mount -t "$fs" "$dev" "$R/move" 2>&1) || lay_fail target "mounting $dev ($fs): $out"
        if [ -d "$TARGET$mnt" ]; then
            out=$(cp -a "$TARGET$mnt/." "$R/move/" 2>&1) || lay_fail target "moving the image's $mnt into $id: $out"
            find "$TARGET$mnt" -mindepth 1 -maxdepth 1 -exec rm -rf {} + 2>/dev/null
        fi
        umount "$R/move"
        mkdir -p "$TARGET$mnt"
        out=$(mount -t "$fs" "$dev" "$TARGET$mnt" 2>&1) || lay_fail target "mounting $dev at $TARGET$mnt: $out"
    done <"$LAY/fs"
}

# in_target PROGRAM: PROGRAM exists in the image (usr-merged or not).
in_target() {
    local d
    for d in usr/sbin usr/bin sbin bin; do
        [ -x "$TARGET/$d/$1" ] && return 0
    done
    return 1
}

# lay_requirements: what the layout and the boot mode need from the image.
lay_requirements() {
    local missing
    missing=
    [ -s "$LAY/raids" ] && ! in_target mdadm && missing="$missing mdadm (package mdadm: the layout has RAID arrays),"
    [ -s "$LAY/vgs" ] && ! in_target lvm && missing="$missing lvm (package lvm2: the layout has LVM volume groups),"
    in_target update-initramfs || missing="$missing update-initramfs (package initramfs-tools),"
    in_target grub-install || missing="$missing grub-install (GRUB),"
    case "$(cat "$LAY/mode")" in
        bios) [ -d "$TARGET/usr/lib/grub/i386-pc" ] || missing="$missing /usr/lib/grub/i386-pc (package grub-pc-bin: BIOS boot)," ;;
        uefi) [ -d "$TARGET/usr/lib/grub/x86_64-efi" ] || missing="$missing /usr/lib/grub/x86_64-efi (package grub-efi-amd64-bin: UEFI boot)," ;;
    esac
    [ -z "$missing" ] || lay_fail target "the image lacks what this layout needs:${missing%,}"
}

fs_uuid() { blkid -o value -s UUID "$1" 2>/dev/null; }

# lay_fstab: the image's fstab without its block-device lines, plus the layout's filesystems by UUID.
lay_fstab() {
    local id fs mnt dev uuid opts pass f
    f=$TARGET/etc/fstab
    [ -f "$f" ] && awk '/^[ \t]*#/ || NF == 0 { print; next }
        $1 ~ /^(UUID|LABEL|PARTUUID|PARTLABEL)=/ || $1 ~ /^\/dev\// || $3 == "swap" { next } { print }' "$f" >"$R/fstab"
    [ -f "$f" ] || : >"$R/fstab"
    echo "# written by the stemforge deploy ramdisk (layout deploy)" >>"$R/fstab"
    while read -r id fs mnt; do
        dev=$(dev_of "$id")
        uuid=$(fs_uuid "$dev")
        [ -n "$uuid" ] || lay_fail target "no filesystem UUID on $dev ($id)"
        case "$fs:$mnt" in
            swap:*) echo "UUID=$uuid none swap sw 0 0" ;;
            *:-) continue ;;
            vfat:*) echo "UUID=$uuid $mnt vfat umask=0077,nofail 0 1" ;; # a mirror's other ESP boots without it
            *:/) echo "UUID=$uuid / $fs errors=remount-ro 0 1" ;;
            ext4:*) echo "UUID=$uuid $mnt ext4 defaults 0 2" ;;
            *) echo "UUID=$uuid $mnt $fs defaults 0 2" ;;
        esac >>"$R/fstab"
    done <"$LAY/fs"
    cp "$R/fstab" "$f" || lay_fail target "writing $f"
}

lay_mdadm_conf() {
    [ -s "$LAY/raids" ] || return 0
    mkdir -p "$TARGET/etc/mdadm"
    {
        echo "# written by the stemforge deploy ramdisk (layout deploy)"
        echo "HOMEHOST <ignore>"
        echo "MAILADDR root"
        echo "POLICY action=re-add"
        mdadm --detail --scan
    } >"$R/mdadm.conf" 2>"$R/md.err" || lay_fail target "mdadm --detail --scan: $(cat "$R/md.err")"
    grep -q '^ARRAY' "$R/mdadm.conf" || lay_fail target "mdadm --detail --scan lists no array"
    cp "$R/mdadm.conf" "$TARGET/etc/mdadm/mdadm.conf" || lay_fail target "writing /etc/mdadm/mdadm.conf"
}

# lay_resync_after_boot: md's initial resync of the mirrors (levels 1 and 10) waits until the first boot is done
# (it otherwise starts at the root's remount and, on a small server, slows that boot by half a minute). A sysctl.d
# file caps md's resync speed from systemd-sysctl on (md applies a new limit to a running resync at once), and a
# one-shot unit ordered after multi-user.target (and cloud-init's last stage, when present) restores the kernel's
# defaults, re-applies the admin's own sysctl.d settings and removes both files and itself: every later boot is
# the image's own. If that boot never completes, the resync still creeps on at the cap. Sets RESYNC.
FIRST_BOOT_SYSCTL=/etc/sysctl.d/90-stemforge-first-boot-resync.conf
FIRST_BOOT_UNIT=stemforge-first-boot-resync.service
lay_resync_after_boot() {
    RESYNC=none
    awk '$2 == 1 || $2 == 10 { found = 1 } END { exit !found }' "$LAY/raids" 2>/dev/null || return 0
    mkdir -p "$TARGET/etc/sysctl.d" "$TARGET/etc/systemd/system/multi-user.target.wants"
    printf '%s\n' "# written by the stemforge deploy ramdisk: md's initial resync waits for the first boot to finish;" \
        "# $FIRST_BOOT_UNIT removes this file then" "dev.raid.speed_limit_min = 1" "dev.raid.speed_limit_max = 1" \
        >"$TARGET$FIRST_BOOT_SYSCTL" || lay_fail target "writing $FIRST_BOOT_SYSCTL"
    cat >"$TARGET/etc/systemd/system/$FIRST_BOOT_UNIT" <<UNIT || lay_fail target "writing $FIRST_BOOT_UNIT"
# written by the stemforge deploy ramdisk (layout deploy): runs once, at the end of the first boot
[Unit]
Description=Let md resync the new mirrors now that the first boot is done (stemforge)
After=multi-user.target cloud-final.service
ConditionPathExists=$FIRST_BOOT_SYSCTL

[Service]
Type=oneshot
ExecStart=/bin/rm -f $FIRST_BOOT_SYSCTL /etc/systemd/system/multi-user.target.wants/$FIRST_BOOT_UNIT
ExecStart=/bin/sh -c 'echo 1000 >/proc/sys/dev/raid/speed_limit_min; echo 200000 >/proc/sys/dev/raid/speed_limit_max'
ExecStart=-/lib/systemd/systemd-sysctl
ExecStart=/bin/rm -f /etc/systemd/system/$FIRST_BOOT_UNIT

[Install]
WantedBy=multi-user.target
UNIT
    chmod 0644 "$TARGET$FIRST_BOOT_SYSCTL" "$TARGET/etc/systemd/system/$FIRST_BOOT_UNIT"  # the ramdisk's umask is 077
    ln -sf "../$FIRST_BOOT_UNIT" "$TARGET/etc/systemd/system/multi-user.target.wants/$FIRST_BOOT_UNIT" ||
        lay_fail target "enabling $FIRST_BOOT_UNIT"
    RESYNC="after the first boot"
}

# chroot_run STAGE WHAT COMMAND...: run COMMAND in the target; its output goes to $R/chroot.log.
chroot_run() {
    local st what
    st=$1 what=$2
    shift 2
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 TERM=dumb chroot "$TARGET" "$@" >"$R/chroot.log" 2>&1 ||
        lay_fail "$st" "$what: $(grep -v '^$' "$R/chroot.log" | tail -n 3 | tr '\n' ' ')"
}

lay_chroot_mounts() {
    local d
    for d in dev proc sys run; do
        mkdir -p "$TARGET/$d"
        mount -o bind "/$d" "$TARGET/$d" || lay_fail target "bind-mounting /$d into the target"
    done
    if [ -d /sys/firmware/efi ]; then
        mkdir -p /sys/firmware/efi/efivars
        grep -q ' /sys/firmware/efi/efivars ' /proc/mounts || mount -t efivarfs efivarfs /sys/firmware/efi/efivars 2>/dev/null
        mount -t efivarfs efivarfs "$TARGET/sys/firmware/efi/efivars" 2>/dev/null
    fi
}

# initramfs_current: every initrd of the target was built after the packages whose initramfs-tools hooks this
# layout needs (mdadm for arrays, lvm2 for volume groups) were installed (their dpkg file list's mtime is the
# install time; the package's own trigger rebuilt the initrd then), so it already carries their hooks, modules and
# udev rules: Debian's mdadm hook assembles every array it finds when its mdadm.conf lists none, and lvm2's udev
# rules activate every VG (autoactivation), so neither needs this deploy's mdadm.conf nor fstab. Rebuilding it
# (update-initramfs under emulation: about 20 minutes) is then skipped. A layout of plain partitions needs nothing
# new of it either: it already mounts the image's root filesystem, which / still is, from a plain partition (a swap
# partition of the layout is not its resume device: hibernation is not a boot need; an image whose initramfs names
# a resume device that is gone waits RESUME_DELAY for it, 5 s). Sets INITRAMFS_KEPT (why it is kept), or
# INITRAMFS_WHY when it must be rebuilt.
initramfs_current() {
    local pkg list initrd newest needs
    INITRAMFS_KEPT= INITRAMFS_WHY= needs=
    newest=
    for pkg in $([ -s "$LAY/raids" ] && echo mdadm) $([ -s "$LAY/vgs" ] && echo lvm2); do
        list=$TARGET/var/lib/dpkg/info/$pkg.list
        [ -f "$list" ] || { INITRAMFS_WHY="no dpkg record of $pkg"; return 1; }
        needs="$needs${needs:+ and }$pkg"
        [ -z "$newest" ] || [ "$list" -nt "$newest" ] && newest=$list
    done
    if [ -z "$newest" ]; then
        INITRAMFS_KEPT="the layout has neither arrays nor volume groups"
        return 0
    fi
    set -- "$TARGET"/boot/initrd.img-*
    [ -f "$1" ] || { INITRAMFS_WHY="the image has no /boot/initrd.img-*"; return 1; }
    for initrd in "$@"; do
        [ "$initrd" -nt "$newest" ] || { INITRAMFS_WHY="${initrd#"$TARGET"} is older than ${newest#"$TARGET"}"; return 1; }
    done
    INITRAMFS_KEPT="built after $needs were installed"
    return 0
}

lay_target() {
    echo target >"$R/stage"
    lay_mkfs
    log "filesystems made; mounting the target, moving the image's files into them"
    lay_mount
    lay_requirements
    lay_fstab
    lay_mdadm_conf
    lay_resync_after_boot
    lay_chroot_mounts
    if initramfs_current; then
        INITRAMFS="kept ($INITRAMFS_KEPT)"
        log "the image's initramfs is $INITRAMFS"
    else
        INITRAMFS="rebuilt ($INITRAMFS_WHY)"
        log "update-initramfs -u -k all in the target: $INITRAMFS_WHY"
        chroot_run target "update-initramfs -u -k all in the target" update-initramfs -u -k all
    fi
    stage target-configured "fstab, $( [ -s "$LAY/raids" ] && echo "mdadm.conf, ")initramfs $INITRAMFS$( [ "$RESYNC" = none ] || echo "; md resync: $RESYNC")" \
        "{\"fstab\":\"$(jesc "$(grep -v '^#' "$TARGET/etc/fstab")")\",\"mdadm_conf\":$( [ -s "$LAY/raids" ] && echo true || echo false),\"initramfs\":\"$(jesc "$INITRAMFS")\",\"resync\":\"$RESYNC\"}"
}

# ---------------------------------------------------------------- 5. the boot loader
# root_disks: the kernel names of the disks holding `/` (through LVs, VGs and arrays down to partitions).
root_disks() {
    local todo next id vg
    todo=$ROOT_ID
    : >"$LAY/rootparts"
    while [ -n "$todo" ]; do
        next=
        for id in $todo; do
            vg=$(awk -v l="$id" '$2 == l { print $1 }' "$LAY/lvs")
            if [ -n "$vg" ]; then
                next="$next $(awk -v v="$vg" '$1 == v { $1 = ""; print }' "$LAY/vgs")"
            elif grep -q "^$id " "$LAY/raids"; then
                next="$next $(awk -v r="$id" '$1 == r { $1 = ""; $2 = ""; print }' "$LAY/raids")"
            else
                echo "$id" >>"$LAY/rootparts"
            fi
        done
        todo=$next
    done
    for id in $(cat "$LAY/rootparts"); do
        kname_of "$(awk -v p="$id" '$3 == p { print $1 }' "$LAY/parts")"
    done | sort -u
}

# grub_cfg_current: the image's /boot/grub/grub.cfg boots this layout as it is, so update-grub (its grub-probe
# calls on LVM over md take ~35 s under emulation) is skipped. The root filesystem was streamed, so it keeps the
# image's UUID; the configuration is kept when / is not split from /boot (the kernel paths stay on /), it finds its
# root with `search --fs-uuid` for that UUID (GRUB's core image, made by grub-install for this layout, carries the
# lvm/mdraid modules that search needs) and every kernel entry passes root=UUID=<that UUID> (the initramfs
# assembles the arrays and activates the VGs, then finds it by UUID). Anything else (root=/dev/..., PARTUUID, a
# kernel or initrd it names that is not in the target, a separate /boot) is regenerated. Sets ROOT_UUID, or
# GRUB_CFG_WHY when it must be regenerated.
grub_cfg_current() {
    local cfg entries path
    cfg=$TARGET/boot/grub/grub.cfg GRUB_CFG_WHY=
    ROOT_UUID=$(fs_uuid "$ROOT_DEV")
    [ -n "$ROOT_UUID" ] || { GRUB_CFG_WHY="no filesystem UUID on $ROOT_DEV"; return 1; }
    awk '$3 == "/boot" { found = 1 } END { exit !found }' "$LAY/fs" && { GRUB_CFG_WHY="the layout has a separate /boot"; return 1; }
    [ -f "$cfg" ] || { GRUB_CFG_WHY="the image has no /boot/grub/grub.cfg"; return 1; }
    grep -Eq "^[[:space:]]*search(\.fs_uuid| .*--fs-uuid).* $ROOT_UUID([[:space:]]|\$)" "$cfg" ||
        { GRUB_CFG_WHY="its grub.cfg does not search for / by UUID $ROOT_UUID"; return 1; }
    entries=$(grep -Ec '^[[:space:]]*linux(efi)?[[:space:]]' "$cfg")
    [ "$entries" -gt 0 ] || { GRUB_CFG_WHY="its grub.cfg has no linux entry"; return 1; }
    [ "$(grep -E '^[[:space:]]*linux(efi)?[[:space:]]' "$cfg" | grep -Ec " root=UUID=$ROOT_UUID([[:space:]]|\$)")" -eq "$entries" ] ||
        { GRUB_CFG_WHY="a grub.cfg entry does not boot root=UUID=$ROOT_UUID"; return 1; }
    for path in $(awk '$1 ~ /^(linux|linuxefi|initrd|initrdefi)$/ { for (i = 2; i <= NF; i++) if ($i ~ /^\//) print $i; else break }' "$cfg"); do
        [ -f "$TARGET$path" ] || { GRUB_CFG_WHY="its grub.cfg names $path, which the image lacks"; return 1; }
    done
    return 0
}

lay_bootloader() {
    local k disks esp first dev num out entries
    echo bootloader >"$R/stage"
    disks=$(root_disks | tr '\n' ' ')
    entries=0
    if [ "$(cat "$LAY/mode")" = bios ]; then
        for k in $disks; do
            log "grub-install --target=i386-pc /dev/$k in the target"
            chroot_run bootloader "grub-install --target=i386-pc /dev/$k" grub-install --target=i386-pc "/dev/$k"
        done
    else
        log "grub-install --target=x86_64-efi in the target"
        chroot_run bootloader "grub-install --target=x86_64-efi" grub-install --target=x86_64-efi \
            --efi-directory=/boot/efi --removable --no-nvram
        first=$(cut -d' ' -f1 "$LAY/esps")
        mkdir -p "$R/esp"
        for esp in $(cat "$LAY/esps"); do
            [ "$esp" = "$first" ] && continue
            dev=$(dev_of "$esp")
            log "copying the ESP to $esp ($dev)"
            mount -t vfat "$dev" "$R/esp" || lay_fail bootloader "mounting the ESP $esp ($dev)"
            rm -rf "$R/esp"/*
            out=$(cp -a "$TARGET/boot/efi/." "$R/esp/" 2>&1) || lay_fail bootloader "copying the ESP to $esp ($dev): $out"
            umount "$R/esp"
        done
    fi
    if grub_cfg_current; then
        GRUB_CFG="kept (its entries boot / by UUID=$ROOT_UUID)"
        log "the image's grub.cfg is kept: its entries find and boot / by UUID=$ROOT_UUID"
    else
        GRUB_CFG="regenerated ($GRUB_CFG_WHY)"
        log "update-grub in the target: $GRUB_CFG_WHY"
        chroot_run bootloader "update-grub in the target" update-grub
    fi
    if [ "$(cat "$LAY/mode")" = uefi ] && [ -n "$(ls /sys/firmware/efi/efivars 2>/dev/null)" ]; then
        log "efibootmgr: a boot entry per ESP"
        for esp in $(cat "$LAY/esps"); do
            dev=$(dev_of "$esp")
            num=$(awk -v p="$esp" '$3 == p { print $2 }' "$LAY/parts")
            k=$(kname_of "$(awk -v p="$esp" '$3 == p { print $1 }' "$LAY/parts")")
            out=$(efibootmgr -q -c -d "/dev/$k" -p "$num" -L "stemforge $k" -l '\EFI\BOOT\BOOTX64.EFI' 2>&1) ||
                lay_fail bootloader "efibootmgr -c for the ESP on /dev/$k: $out"
            entries=$((entries + 1))
        done
    fi
    stage bootloader-installed "GRUB ($(cat "$LAY/mode")) on $disks; grub.cfg $GRUB_CFG" \
        "{\"mode\":\"$(cat "$LAY/mode")\",\"disks\":\"${disks% }\",\"esps\":$(wc -w 2>/dev/null <"$LAY/esps" || echo 0),\"boot_entries\":$entries,\"grub_cfg\":\"$(jesc "$GRUB_CFG")\"}"
}

# ---------------------------------------------------------------- 6. the config drive, main
lay_write_configdrive() {
    echo configdrive >"$R/stage"
    fetch_configdrive
    [ "$ISO_BYTES" -le "$(blockdev --getsize64 "$CD_DEV")" ] || lay_fail configdrive "the config drive does not fit $CD_DEV"
    dd if="$ISO" of="$CD_DEV" bs=$MIB conv=fsync 2>"$R/dd.err" || lay_fail configdrive "writing $CD_DEV: $(tail -n 1 "$R/dd.err")"
    sync
    blockdev --flushbufs "$CD_DEV" 2>/dev/null
    [ "$(iso_label "$CD_DEV")" = config-2 ] || [ "$(iso_label "$CD_DEV")" = CONFIG-2 ] ||
        lay_fail configdrive "$CD_DEV does not read back as the config-2 volume"
    stage configdrive-written "config drive in $CD_DEV" \
        "{\"partition\":\"$CD_DEV\",\"table\":\"gpt\",\"start_sector\":$CD_START,\"iso_bytes\":$ISO_BYTES}"
}

# lay_finish: unmount the target, deactivate the VGs, stop the arrays cleanly (their resync goes on after first boot
# from the recorded checkpoint), then give md its speed limits back.
lay_finish() {
    local md
    log "unmounting the target"
    sync
    target_umount
    log "deactivating the volume groups"
    [ -s "$LAY/vgs" ] && lvmc vgchange -an >/dev/null 2>&1
    log "stopping the arrays"
    for md in $(md_devices); do  # while resync is still capped: it resumes at first boot from the checkpoint
        mdadm --stop "/dev/$md" >/dev/null 2>&1
    done
    raid_speed restore
    sync
    log "target finished"
}

layout_main() {
    local t0 dev
    echo layout >"$R/stage"
    [ -n "$SF_CONFIGDRIVE_URL" ] || fail instructions "SF_CONFIGDRIVE_URL is missing"
    case "$SF_ROOTFS_URL" in http://*) ;; *) fail instructions "SF_ROOTFS_URL must be an http:// URL" ;; esac
    case "$SF_ROOTFS_OFFSET" in '' | *[!0-9]*) fail instructions "SF_ROOTFS_OFFSET must be a byte offset, not '$SF_ROOTFS_OFFSET'" ;; esac
    case "$SF_ROOTFS_SIZE" in '' | *[!0-9]* | 0) fail instructions "SF_ROOTFS_SIZE must be a positive byte count, not '$SF_ROOTFS_SIZE'" ;; esac
    SF_ROOTFS_SHA256=$(echo "$SF_ROOTFS_SHA256" | tr 'A-F' 'a-f')
    case "$SF_ROOTFS_SHA256" in *[!0-9a-f]* | '') fail instructions "SF_ROOTFS_SHA256 must be 64 hex digits" ;; esac
    [ ${#SF_ROOTFS_SHA256} -eq 64 ] || fail instructions "SF_ROOTFS_SHA256 must be 64 hex digits, not ${#SF_ROOTFS_SHA256}"
    SF_ROOTFS_FSTYPE=${SF_ROOTFS_FSTYPE:-ext4}
    [ "$SF_ROOTFS_FSTYPE" = ext4 ] || fail instructions "SF_ROOTFS_FSTYPE must be ext4, not '$SF_ROOTFS_FSTYPE'"
    SF_ROOTFS_FORMAT=${SF_ROOTFS_FORMAT:-raw}
    case "$SF_ROOTFS_FORMAT" in raw) ;; gzip) [ "$SF_ROOTFS_OFFSET" = 0 ] || fail instructions "SF_ROOTFS_OFFSET must be 0 for SF_ROOTFS_FORMAT=gzip" ;;
        *) fail instructions "SF_ROOTFS_FORMAT must be raw or gzip, not '$SF_ROOTFS_FORMAT'" ;; esac
    t0=$(now)
    wait_disks 20 || fail layout "no disks found (modules: $(tr '\n' ' ' </etc/modules.load))"
    lay_fetch
    lay_check
    stage disk-selected "layout ($(cat "$LAY/mode")) on $(cut -d' ' -f2 "$LAY/disks" | tr '\n' ' ')" "$(lay_roles_json)"
    lay_build
    stage layout-built "$(wc -l <"$LAY/devs") devices; / on $ROOT_DEV" \
        "{\"root\":\"$ROOT_DEV\",\"root_bytes\":$ROOT_BYTES,\"arrays\":$(wc -l <"$LAY/raids"),\"volume_groups\":$(wc -l <"$LAY/vgs"),\"devices\":\"$(jesc "$(tr '\n' ';' <"$LAY/devs")")\"}"
    lay_rootfs
    lay_target
    lay_bootloader
    lay_finish
    lay_write_configdrive
    echo finish >"$R/stage"
    sync
    stage done "deployed the layout in $(elapsed "$t0" "$(now)")s; / on $ROOT_DEV" "{\"device\":\"$ROOT_DEV\"}"
    post_event result done true "deployed the layout; rebooting" "{\"device\":\"$ROOT_DEV\"}" 5 ||
        log "the result could not be reported; rebooting anyway"
    log "rebooting"
    sleep 1
    reboot -f
    stay_up
}
