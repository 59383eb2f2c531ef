#!/usr/bin/env bash
# Boot the test Debian image (tests/support/debian-image.sh) once under plain QEMU (TCG) and
# check that it is the cloud image the tests need:
#
#   tests/support/boot-debian-image.sh [IMAGE]     (IMAGE: built or taken from the cache)
#
# It boots a 4 GiB qcow2 overlay of the 2 GiB image through the image's own bootloader
# (extlinux on an MBR disk: this machine has no device-mapper, see debian-image.sh), with a
# NoCloud seed (a `cidata` ISO on the IDE CD-ROM: a hostname, an SSH key for root) and
# checks: a login prompt on the serial console; SSH as root with the seed's key;
# `cloud-init status --wait` done; the seed's hostname; a non-empty /etc/machine-id; SSH host
# keys made at first boot; the QEMU guest agent answering guest-ping on its virtio-serial
# port; growpart: the root filesystem grown to the 4 GiB disk. It prints the times (boot to
# login prompt, to SSH, cloud-init done) and exits non-zero on the first failed check.
# Plain QEMU, not libvirt: this proves the image alone. Needs qemu-system-x86, genisoimage,
# socat, openssh-client (installed when missing). Every wait is bounded (BOOT_TIMEOUT, s).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
image=${1:-$("$here/debian-image.sh")}
timeout=${BOOT_TIMEOUT:-600}
hostname=labtest-$$

log() { echo "boot-debian-image: $*" >&2; }
fail() {
    log "FAILED: $*"
    [ -f "$work/console.log" ] && { log "console tail:"; tail -n 40 "$work/console.log" >&2; }
    exit 1
}

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v genisoimage >/dev/null || need+=(genisoimage)
command -v socat >/dev/null || need+=(socat)
command -v ssh >/dev/null || need+=(openssh-client)
if [ "${#need[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o Acquire::Retries=5 update -qq
    apt-get -o Acquire::Retries=5 install -y -q --no-install-recommends "${need[@]}" >&2
fi

work=$(mktemp -d /tmp/boot-debian-image.XXXXXX)
qemu_pid=
cleanup() {
    if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then
        kill "$qemu_pid"
        wait "$qemu_pid" 2>/dev/null || true
    fi
    [ -n "${KEEP:-}" ] && { log "kept $work"; return; }
    rm -rf "$work"
}
trap cleanup EXIT

# A free port on the loopback for the guest's SSH (several runs may share the machine).
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

ssh-keygen -q -t ed25519 -N '' -C boot-debian-image -f "$work/id"
cat >"$work/meta-data" <<EOF
instance-id: $hostname
local-hostname: $hostname
EOF
cat >"$work/user-data" <<EOF
#cloud-config
hostname: $hostname
fqdn: $hostname.test.lab
disable_root: false
ssh_authorized_keys:
  - $(cat "$work/id.pub")
growpart:
  mode: auto
  devices: ['/']
resize_rootfs: true
EOF
genisoimage -quiet -output "$work/seed.iso" -volid cidata -joliet -rock \
    "$work/user-data" "$work/meta-data"
qemu-img create -q -f qcow2 -b "$image" -F qcow2 "$work/overlay.qcow2" 4G

log "booting $image (overlay 4 GiB, ssh on 127.0.0.1:$port)"
start=$(date +%s.%N)
qemu-system-x86_64 -accel tcg -m 1024 -nographic \
    -drive file="$work/overlay.qcow2",if=virtio \
    -cdrom "$work/seed.iso" \
    -netdev user,id=n,hostfwd=tcp:127.0.0.1:"$port"-:22 -device virtio-net,netdev=n \
    -device virtio-serial \
    -chardev socket,path="$work/qga.sock",server=on,wait=off,id=qga0 \
    -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0 \
    </dev/null >"$work/console.log" 2>"$work/qemu.err" &
qemu_pid=$!

since() { awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
deadline=$(($(date +%s) + timeout))
alive() { kill -0 "$qemu_pid" 2>/dev/null || fail "QEMU exited: $(cat "$work/qemu.err")"; }
in_time() { [ "$(date +%s)" -lt "$deadline" ] || fail "timed out after $timeout s waiting for $1"; }

until grep -q 'login:' "$work/console.log"; do
    alive; in_time "a login prompt on the serial console"; sleep 1
done
t_login=$(since)
log "login prompt on the serial console after $t_login s"

gssh() {
    ssh -q -i "$work/id" -p "$port" -o BatchMode=yes -o ConnectTimeout=10 \
        -o StrictHostKeyChecking=no -o UserKnownHostsFile="$work/known_hosts" \
        root@127.0.0.1 "$@"
}
until gssh true 2>/dev/null; do
    alive; in_time "SSH as root"; sleep 2
done
t_ssh=$(since)
log "SSH as root after $t_ssh s"

status=$(timeout "$timeout" ssh -q -i "$work/id" -p "$port" -o BatchMode=yes \
    -o StrictHostKeyChecking=no -o UserKnownHostsFile="$work/known_hosts" \
    root@127.0.0.1 cloud-init status --wait) || fail "cloud-init status --wait: $status"
t_ci=$(since)
echo "$status" | grep -qx 'status: done' || fail "cloud-init: $status"
log "cloud-init done after $t_ci s"

got=$(gssh hostname) || fail "ssh hostname"
[ "$got" = "$hostname" ] || fail "hostname is '$got', the seed says '$hostname'"
mid=$(gssh cat /etc/machine-id) || fail "ssh cat /etc/machine-id"
[ -n "$mid" ] && [ "$mid" != uninitialized ] || fail "/etc/machine-id is '$mid'"
# Written to the disk (systemd-machine-id-commit), not a transient one mounted over the file.
! gssh findmnt -n /etc/machine-id >/dev/null || fail "/etc/machine-id is still a transient mount"
keys=$(gssh 'ls /etc/ssh/ssh_host_*_key.pub') || fail "no SSH host keys"
made=$(gssh "grep -c 'Generating public/private' /var/log/cloud-init-output.log") ||
    fail "cloud-init did not make the SSH host keys"
root_bytes=$(gssh df -B1 --output=size / | tail -n 1 | tr -d ' ') || fail "ssh df /"
[ "$root_bytes" -gt $((3800 * 1048576)) ] || fail "root filesystem is $root_bytes bytes, not ~4 GiB"
net=$(gssh 'grep -h "^iface" /etc/network/interfaces.d/*cloud-init*') ||
    fail "cloud-init rendered no ifupdown configuration"

pong=
until [ -n "$pong" ]; do
    alive; in_time "the guest agent"
    pong=$(echo '{"execute":"guest-ping"}' | timeout 10 socat -t 5 - UNIX-CONNECT:"$work/qga.sock" 2>/dev/null | grep '"return"' || true)
    [ -n "$pong" ] || sleep 2
done
[ "$(echo "$pong" | tr -d ' ')" = '{"return":{}}' ] || fail "guest-ping answered $pong"

boot=$(gssh 'systemd-analyze 2>/dev/null | head -n 1' || true)
stages=$(gssh "cloud-init analyze show 2>/dev/null | grep -E '^Finished stage|^Total Time'" || true)

# REBOOT=1: a second boot keeps the identity the first one made (machine-id, host keys).
rebooted=
if [ -n "${REBOOT:-}" ]; then
    hostkey=$(ssh-keygen -lf "$work/known_hosts" | awk '{ print $2 }' | sort | head -n 1)
    gssh 'systemctl reboot' || true
    sleep 5
    deadline=$(($(date +%s) + timeout))
    t0=$(date +%s)
    until gssh true 2>/dev/null; do
        alive; in_time "SSH after the reboot"; sleep 2
    done
    gssh cloud-init status --wait >/dev/null || fail "cloud-init after the reboot"
    [ "$(gssh cat /etc/machine-id)" = "$mid" ] || fail "the machine-id changed on reboot"
    [ "$(gssh hostname)" = "$hostname" ] || fail "the hostname changed on reboot"
    # StrictHostKeyChecking=no still refuses a changed key for a known host: the same key.
    rebooted="same machine-id, hostname and host key ($hostkey) after a reboot ($(($(date +%s) - t0)) s to SSH)"
fi
log "all checks passed"
cat <<EOF
image:              $image ($(du -h "$image" | cut -f1) on disk)
login prompt:       $t_login s after QEMU started
ssh as root:        $t_ssh s
cloud-init done:    $t_ci s
hostname:           $got
machine-id:         $mid (on disk)
ssh host keys:      $(echo "$keys" | xargs -n1 basename | tr '\n' ' ')($made made by cloud-init)
network:            $(echo "$net" | paste -sd ";" - | sed "s/;/; /g") (ifupdown, rendered by cloud-init)
root filesystem:    $((root_bytes / 1048576)) MiB (disk grown from 2 to 4 GiB)
guest-ping:         $pong
guest systemd:      $boot
cloud-init stages:
$(echo "$stages" | sed 's/^/    /')
EOF
[ -z "$rebooted" ] || echo "reboot:             $rebooted"
