#!/bin/sh
# /init of a smoke VM: lab's busybox initramfs booted with the host's kernel.
# It loads the drivers /etc/lab/modules lists, takes a DHCP lease, mounts its disk clone,
# writes its name there, starts the qemu guest agent and the SSH server (dropbear) when
# lab put them in, prints one LAB-READY line on the console and stays up. Every
# failure is a LAB-ERROR line, and the LAB-READY line still comes, so lab never waits for
# a VM that has already given up. PID 1 must never exit: the kernel would panic.

PATH=/bin:/sbin:/usr/bin:/usr/sbin
export PATH

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /run /tmp /data /dev/pts
# Pseudo-terminals, for interactive SSH sessions.
mount -t devpts -o gid=5,mode=620 devpts /dev/pts
# The console the kernel named (console=ttyS0), whether or not the archive had a node.
exec </dev/console >/dev/console 2>&1

vm=
profile=
# Words from /proc/cmdline are split on purpose but never globbed.
set -f
for word in $(cat /proc/cmdline); do
    case "$word" in
        lab.vm=*) vm=${word#lab.vm=} ;;
        lab.profile=*) profile=${word#lab.profile=} ;;
    esac
done
set +f

fail() {
    echo "LAB-ERROR vm=${vm:-?} $*"
}

# A tool's error output on one line, so it stays inside its LAB-ERROR line.
oneline() {
    tr '\n' ' ' <"$1"
}

[ -n "$vm" ] || fail "no lab.vm= on the kernel command line"
hostname "${vm:-lab}"

# In dependency order, one "PATH required|optional" per line.
while read -r module need; do
    [ -n "$module" ] || continue
    if ! insmod "$module" 2>/tmp/insmod.err && [ "$need" != optional ]; then
        fail "insmod $module: $(oneline /tmp/insmod.err)"
    fi
done </etc/lab/modules

# Drivers probe their devices asynchronously: wait up to $2 tenths of a second for $1.
wait_for() {
    n=0
    while [ ! -e "$1" ] && [ "$n" -lt "$2" ]; do
        sleep 0.1
        n=$((n + 1))
    done
    [ -e "$1" ]
}

first_nic() {
    for dev in /sys/class/net/*; do
        [ -e "$dev" ] && [ "${dev##*/}" != lo ] && { echo "${dev##*/}"; return; }
    done
}

ip link set lo up
n=0
nic=$(first_nic)
while [ -z "$nic" ] && [ "$n" -lt 100 ]; do
    sleep 0.1
    n=$((n + 1))
    nic=$(first_nic)
done

addr=none
if [ -z "$nic" ]; then
    fail "no network interface: virtio_net found no device"
elif udhcpc -i "$nic" -s /etc/udhcpc/default.script -x "hostname:${vm:-lab}" \
        -t 15 -T 1 -n >/run/udhcpc.log 2>&1 && [ -s /run/lab-ip ]; then
    # udhcpc stays in the background and renews the lease.
    addr=$(cat /run/lab-ip)
else
    fail "no DHCP lease on $nic: $(tail -n 3 /run/udhcpc.log | tr '\n' ' ')"
fi

disk=missing
if ! wait_for /dev/vda 100; then
    fail "no disk /dev/vda: virtio_blk found no device"
elif ! mount -t ext4 /dev/vda /data 2>/tmp/mount.err; then
    fail "mounting /dev/vda on /data: $(oneline /tmp/mount.err)"
elif [ ! -f /data/lab-base ]; then
    fail "/data/lab-base is missing: /dev/vda is not a clone of lab's base"
elif [ -n "$profile" ] && ! grep -qx "profile=$profile" /data/lab-base; then
    # Someone else's disk: left as it is.
    fail "/dev/vda is the base of another profile: $(head -n 1 /data/lab-base)"
elif ! echo "$vm" >/data/lab-vm 2>/tmp/write.err; then
    fail "writing /data/lab-vm: $(oneline /tmp/write.err)"
else
    # Provisioning records and SSH host keys live on the disk, as in any installed VM: a
    # restart keeps them (the pinned host key stays right), a new clone (lab reset) starts
    # without.
    mkdir -p /data/lab-steps /var/lib/lab && ln -sfn /data/lab-steps /var/lib/lab/steps
    mkdir -p -m 700 /data/lab-ssh && rm -rf /etc/dropbear && ln -s /data/lab-ssh /etc/dropbear
    # On the virtual disk (journal included) before lab hears the VM is ready.
    sync
    disk=ok
fi

# The guest agent lab named in /etc/lab/guest-agent (qemu-ga, or a program with its
# options; `lab trim` asks it to fstrim /data) on the virtio serial port libvirt named
# org.qemu.guest_agent.0. There is no udev to make the
# /dev/virtio-ports/NAME link: the port's name is read from sysfs.
agent_port() {
    for name in /sys/class/virtio-ports/*/name; do
        [ -e "$name" ] || continue
        if [ "$(cat "$name")" = org.qemu.guest_agent.0 ]; then
            port=${name%/name}
            echo "/dev/${port##*/}"
            return
        fi
    done
}

agent=$(cat /etc/lab/guest-agent 2>/dev/null)
if [ -n "$agent" ]; then
    n=0
    port=$(agent_port)
    while { [ -z "$port" ] || [ ! -e "$port" ]; } && [ "$n" -lt 50 ]; do
        sleep 0.1
        n=$((n + 1))
        port=$(agent_port)
    done
    if [ -z "$port" ] || [ ! -e "$port" ]; then
        fail "no guest agent port: no virtio serial port named org.qemu.guest_agent.0"
    elif ! "$agent" --daemonize -m virtio-serial -p "$port" -f /run/qemu-ga.pid \
            -t /run -l /run/qemu-ga.log 2>/tmp/qemu-ga.err; then
        fail "$agent on $port: $(oneline /tmp/qemu-ga.err)"
    fi
fi

# The SSH server lab named in /etc/lab/ssh-server (dropbear, or a program with its
# options): host keys made at first use (-R), root logs in with the key lab put in
# /root/.ssh/authorized_keys, never with a password (-s).
server=$(cat /etc/lab/ssh-server 2>/dev/null)
if [ -n "$server" ]; then
    if ! "$server" -R -s -P /run/sshd.pid 2>/tmp/sshd.err; then
        fail "$server: $(oneline /tmp/sshd.err)"
    fi
fi

echo "LAB-READY vm=${vm:-?} ip=$addr disk=$disk"

# A root shell on the serial console, as a machine's own console gives one: what
# `lab console` reaches when the network is cut. cttyhack makes the console the shell's
# controlling terminal (Ctrl+C works); a shell that exits is started again.
while :; do
    setsid cttyhack sh -l
    sleep 1
done
