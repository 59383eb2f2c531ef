#!/usr/bin/env bash
# Build a cloud-style Debian 12 (bookworm) disk image for the tests, from Debian's own
# packages, and cache it on this machine.
#
#   tests/support/debian-image.sh [CACHE_DIR]      (as root; CACHE_DIR: /var/cache/lab-test)
#
# Makes CACHE_DIR/debian-12-cloud-HASH/ holding debian-12-cloud.qcow2 (2 GiB virtual,
# compressed), debian-12-cloud.qcow2.sha256, SHA256SUMS, SHA512SUMS (the format Debian
# publishes beside its images) and packages.txt (what is installed), and prints the path of
# the qcow2 on stdout (progress goes to stderr). HASH is the sha256 of this script's text and
# the mirror: the recipe. A warm cache answers at once; only a cold one needs the network.
#
# What the image is: what a downloaded Debian "genericcloud" image is, built here so that the
# tests need no download from outside: Debian's cloud kernel, systemd, OpenSSH, the QEMU guest
# agent, cloud-init (NoCloud only, then None) with growpart, ifupdown + dhclient for the
# network cloud-init renders (what Debian 12's cloud images use; netplan is not in bookworm),
# no root password, an empty /etc/machine-id and no SSH host keys (each clone makes its own
# at first boot). It boots through its own bootloader, like a downloaded image.
#
# Why this way: this machine has no device-mapper (no kpartx, no partitions on loop devices
# to rely on), so the disk is an MBR disk with one ext4 partition and extlinux: the root
# filesystem is made in a file of its own (mke2fs -d, from the mmdebstrap tree), extlinux is
# installed into it through a plain loop mount of that file, and the file is spliced into the
# disk at the partition's offset with dd, behind extlinux's MBR code (mbr.bin). GRUB would
# need the partitioned disk as a block device; extlinux needs only the mounted filesystem.
#
# The cloud kernel (linux-image-cloud-amd64, ~100 MB smaller than linux-image-amd64) has
# virtio (blk, scsi, net, console), ata_piix, sr_mod and iso9660, but no AHCI and no e1000:
# its NoCloud seed must be an IDE CD-ROM (i440fx "pc" machine) or a virtio disk/SCSI CD-ROM,
# and its NIC virtio, as with Debian's own genericcloud images.
#
# Host packages: the script installs what it lacks (mmdebstrap, extlinux, syslinux-common,
# e2fsprogs, fdisk, qemu-utils), like scripts/setup-host.sh does.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "$0: run as root (it mounts a loop device)" >&2
    exit 2
fi

cache_dir=${1:-/var/cache/lab-test}
mirror=${LAB_DEBIAN_MIRROR:-http://deb.debian.org/debian}
security_mirror=${LAB_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
name=debian-12-cloud
disk_size=2G          # virtual size of the disk
part_start=2048       # first sector of the root partition (1 MiB)

# The recipe: this script and the mirrors it reads. Anything that changes the image changes
# this file (or the mirrors), so a changed recipe never finds a stale image.
hash=$({ cat "$0"; echo "$mirror $security_mirror"; } | sha256sum | cut -c1-16)
dir="$cache_dir/$name-$hash"
image="$dir/$name.qcow2"

log() { echo "debian-image: $*" >&2; }
. "$(cd "$(dirname "$0")" && pwd)/debian-cache.sh"

if [ -f "$dir/SHA256SUMS" ] && [ -f "$image" ]; then
    echo "$image"
    exit 0
fi

# --- host tools ------------------------------------------------------------------------
need=()
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v extlinux >/dev/null || need+=(extlinux)
[ -f /usr/lib/EXTLINUX/mbr.bin ] || need+=(extlinux)
[ -f /usr/lib/syslinux/modules/bios/ldlinux.c32 ] || need+=(syslinux-common)
command -v mke2fs >/dev/null || need+=(e2fsprogs)
command -v sfdisk >/dev/null || need+=(fdisk)
command -v qemu-img >/dev/null || need+=(qemu-utils)
if [ "${#need[@]}" -gt 0 ]; then
    log "installing host packages: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    retry apt-get -o Acquire::Retries=5 update -qq
    retry apt-get -o Acquire::Retries=5 install -y -q --no-install-recommends "${need[@]}" >&2
fi

# --- one build at a time per recipe ----------------------------------------------------
lock_recipe "$cache_dir" "$name" "$hash"
if [ -f "$dir/SHA256SUMS" ] && [ -f "$image" ]; then
    echo "$image"   # built by another run while this one waited
    exit 0
fi

work=$(mktemp -d "$cache_dir/.build-$name-$hash.XXXXXX")
mnt="$work/mnt"
cleanup() {
    if mountpoint -q "$mnt" 2>/dev/null; then umount "$mnt" || umount -l "$mnt"; fi
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT
start=$(date +%s)

# --- the root tree ---------------------------------------------------------------------
packages=(
    linux-image-cloud-amd64 initramfs-tools
    systemd-sysv udev dbus
    openssh-server openssh-sftp-server
    qemu-guest-agent
    cloud-init cloud-guest-utils fdisk e2fsprogs
    ifupdown isc-dhcp-client iproute2 netbase
    sudo ca-certificates procps
)
root="$work/root"
log "mmdebstrap bookworm into $root (${#packages[@]} packages and their dependencies)"
# Each attempt starts from an empty directory (mmdebstrap wants one).
tree() {
    rm -rf --one-file-system "$root"
    mmdebstrap --quiet --mode=root --variant=apt --format=directory \
        --aptopt='Acquire::Retries "5"' \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
        --include="$(IFS=,; echo "${packages[*]}")" \
        bookworm "$root" \
        "deb $mirror bookworm main" \
        "deb $mirror bookworm-updates main" \
        "deb $security_mirror bookworm-security main" >&2
}
retry tree

uuid=$(cat /proc/sys/kernel/random/uuid)

# Identity: none baked in. systemd makes a machine-id at first boot when the file is empty
# (and commits it once / is writable); cloud-init (cc_ssh) makes the SSH host keys.
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
rm -f "$root"/etc/ssh/ssh_host_*
echo debian >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
rm -f "$root/etc/resolv.conf"
: >"$root/etc/resolv.conf"
# No root password: the account is locked ('*'), logins are by key only.
sed -i 's/^root:[^:]*:/root:*:/' "$root/etc/shadow"

# Should cloud-init not have made host keys by the time sshd starts (cloud-init disabled or
# broken), sshd makes its own instead of failing its config test.
mkdir -p "$root/etc/systemd/system/ssh.service.d"
cat >"$root/etc/systemd/system/ssh.service.d/host-keys.conf" <<'EOF'
[Service]
ExecStartPre=/bin/sh -c 'ls /etc/ssh/ssh_host_*_key >/dev/null 2>&1 || /usr/bin/ssh-keygen -A'
EOF

# cloud-init: NoCloud (a cidata seed) or nothing; no probing of cloud metadata services.
cat >"$root/etc/cloud/cloud.cfg.d/90_dpkg.cfg" <<'EOF'
datasource_list: [ NoCloud, None ]
EOF
# Two choices for boot time under TCG, where the tests run:
# - host keys ed25519 and ecdsa only: cloud-init's default list adds rsa and dsa, ~30 s of
#   key generation under TCG (a seed may still ask for them: ssh_genkeytypes);
# - the locale C.UTF-8, built into libc: cloud-init's default en_US.UTF-8 is not enabled in
#   /etc/locale.gen of a tree that debconf did not configure, so cloud-init's locale module
#   fails (cloud-init status: error). en_US.UTF-8 is enabled there for seeds that ask for it.
cat >"$root/etc/cloud/cloud.cfg.d/50_lab_test.cfg" <<'EOF'
ssh_genkeytypes: [ ed25519, ecdsa ]
locale: C.UTF-8
EOF
echo 'LANG=C.UTF-8' >"$root/etc/default/locale"
sed -i 's/^# *\(en_US.UTF-8 UTF-8\)/\1/' "$root/etc/locale.gen"

# The network: loopback here; the NIC's DHCP stanza is what cloud-init renders (ifupdown,
# /etc/network/interfaces.d/50-cloud-init) from the seed or its fallback (DHCP on the first
# NIC).
cat >"$root/etc/network/interfaces" <<'EOF'
# The NIC's configuration is written by cloud-init into interfaces.d.
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback
EOF

cat >"$root/etc/fstab" <<EOF
UUID=$uuid / ext4 errors=remount-ro,discard 0 1
EOF

# extlinux boots the kernel and initramfs through the links Debian keeps at / (a kernel
# upgrade in the guest moves them).
mkdir -p "$root/boot/extlinux"
cat >"$root/boot/extlinux/extlinux.conf" <<EOF
DEFAULT debian
PROMPT 0
TIMEOUT 0
SERIAL 0 115200
LABEL debian
    LINUX /vmlinuz
    INITRD /initrd.img
    APPEND root=UUID=$uuid ro console=tty0 console=ttyS0,115200n8
EOF
cp /usr/lib/syslinux/modules/bios/ldlinux.c32 "$root/boot/extlinux/"
[ -e "$root/vmlinuz" ] && [ -e "$root/initrd.img" ] ||
    { log "no /vmlinuz or /initrd.img in the tree"; exit 1; }

chroot "$root" dpkg-query -W -f='${Package} ${Version}\n' >"$work/packages.txt"
rm -rf "$root"/var/cache/apt/*.bin "$root"/var/log/*.log "$root"/var/log/apt/*

# --- the disk --------------------------------------------------------------------------
# The partition fills the disk after its first MiB. ext4 without 64bit, metadata_csum_seed
# and orphan_file: features extlinux 6.04 cannot read.
disk_bytes=$(numfmt --from=iec "$disk_size")
part_bytes=$((disk_bytes - part_start * 512))
log "root filesystem: $((part_bytes / 1048576)) MiB ext4"
truncate -s "$part_bytes" "$work/root.ext4"
mke2fs -q -t ext4 -O ^64bit,^metadata_csum_seed,^orphan_file -L root -U "$uuid" \
    -E root_owner=0:0 -d "$root" "$work/root.ext4"
rm -rf --one-file-system "$root"

mkdir -p "$mnt"
mount -o loop "$work/root.ext4" "$mnt"
extlinux --install "$mnt/boot/extlinux" >&2
umount "$mnt"
e2fsck -fn "$work/root.ext4" >&2

truncate -s "$disk_bytes" "$work/disk.raw"
echo "start=$part_start, type=83, bootable" | sfdisk -q --label dos "$work/disk.raw" >&2
dd if=/usr/lib/EXTLINUX/mbr.bin of="$work/disk.raw" bs=440 count=1 conv=notrunc status=none
dd if="$work/root.ext4" of="$work/disk.raw" bs=1M seek=$((part_start * 512 / 1048576)) \
    conv=notrunc,sparse status=none
rm -f "$work/root.ext4"

log "compressing into qcow2"
qemu-img convert -q -c -f raw -O qcow2 "$work/disk.raw" "$work/$name.qcow2"
rm -f "$work/disk.raw"

(
    cd "$work"
    sha256sum "$name.qcow2" >"$name.qcow2.sha256"
    cp "$name.qcow2.sha256" SHA256SUMS.tmp
    sha512sum "$name.qcow2" >SHA512SUMS
    mv SHA256SUMS.tmp SHA256SUMS   # last: its presence marks a finished image
)
rm -rf "$mnt"
mkdir -p "$dir"
for f in "$name.qcow2" "$name.qcow2.sha256" SHA512SUMS packages.txt SHA256SUMS; do
    mv "$work/$f" "$dir/$f"
done
log "built in $(($(date +%s) - start)) s: $(du -h "$image" | cut -f1) ($dir)"
echo "$image"
