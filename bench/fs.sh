# Shared by the benchmark scripts: run a comparison on the file system under test.
# BENCH_FS names it:
#   root            this machine's root file system as it is (default)
#   ext4-journal    a loop image made by mkfs.ext4 with Debian's defaults (a journal,
#                   data=ordered): the typical server
#   xfs             a loop image made by mkfs.xfs
#   ext4-nojournal  a loop image made by mkfs.ext4 -O ^has_journal
# Both sides' queues go on it: mailspool's spool (under $work, or /var/spool/mailspool
# bind-mounted from the image) and Postfix's queue_directory (/var/spool/postfix,
# bind-mounted from the image after copying it there).
# Source it; call fs_setup (it sets $fs_root, where to make $work) and fs_teardown on
# exit.

BENCH_FS="${BENCH_FS:-root}"
fs_mnt=""
fs_binds=()

# fs_setup: mount the image (as root); $fs_root is where $work goes.
fs_setup() {
    fs_root=/var/tmp
    [ "$BENCH_FS" = root ] && return 0
    local mkfs
    case "$BENCH_FS" in
        ext4-journal) mkfs=(mkfs.ext4 -q -F) ;;
        ext4-nojournal) mkfs=(mkfs.ext4 -q -F -O ^has_journal) ;;
        xfs)
            command -v mkfs.xfs >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xfsprogs >/dev/null
            mkfs=(mkfs.xfs -q -f) ;;
        *) echo "BENCH_FS=$BENCH_FS: expected root, ext4-journal, xfs or ext4-nojournal" >&2; exit 2 ;;
    esac
    fs_mnt="/var/tmp/mailspool-bench-fs.$BENCH_FS"
    fs_teardown
    mkdir -p "$fs_mnt"
    truncate -s 16G "$fs_mnt.img"
    "${mkfs[@]}" "$fs_mnt.img" >/dev/null
    mount -o loop "$fs_mnt.img" "$fs_mnt"
    fs_root="$fs_mnt"
}

# fs_bind DIR: put DIR on the image (its contents copied), until fs_teardown.
fs_bind() {
    [ "$BENCH_FS" = root ] && return 0
    local dir="$1" name
    name=$(echo "$dir" | tr / _)
    mkdir -p "$fs_mnt/$name" "$dir"
    cp -a "$dir/." "$fs_mnt/$name/"
    chown --reference="$dir" "$fs_mnt/$name"; chmod --reference="$dir" "$fs_mnt/$name"
    mount --bind "$fs_mnt/$name" "$dir"
    fs_binds+=("$dir")
}

# fs_unbind: give the bound directories back (before whatever removes them).
fs_unbind() {
    local d
    for d in "${fs_binds[@]}"; do umount "$d" 2>/dev/null || umount -l "$d" 2>/dev/null || true; done
    fs_binds=()
}

fs_teardown() {
    [ "$BENCH_FS" = root ] && return 0
    fs_unbind
    if [ -n "$fs_mnt" ]; then
        mountpoint -q "$fs_mnt" && { umount "$fs_mnt" 2>/dev/null || umount -l "$fs_mnt"; }
        rm -f "$fs_mnt.img"
        rmdir "$fs_mnt" 2>/dev/null || true
    fi
}
