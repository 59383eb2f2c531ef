#!/usr/bin/env bash
# Prepare a Debian 12 host (as root) for lab: system packages, the libvirt daemon, and with
# --install, lab itself and its manual pages. Safe to run again: it installs what is missing
# and starts what is not running.
set -euo pipefail

install_lab=0
for arg in "$@"; do
    case "$arg" in
        --install) install_lab=1 ;;
        -h|--help)
            echo "usage: $0 [--install]   (as root; --install also builds and installs lab)"
            exit 0 ;;
        *) echo "$0: unknown argument $arg" >&2; exit 2 ;;
    esac
done

if [ "$(id -u)" -ne 0 ]; then
    echo "$0: run as root (sudo $0 $*)" >&2
    exit 2
fi
# Said before anything is installed, not after.
if [ "$install_lab" -eq 1 ] && ! command -v cargo >/dev/null; then
    echo "$0: --install builds lab with cargo, which is not on PATH: install a Rust toolchain (rustup, stable) first" >&2
    exit 2
fi

# Debian package names. Fedora/CentOS equivalents, for reference (dropbear from EPEL on
# CentOS):
#   dnf install libvirt-daemon libvirt-daemon-driver-qemu libvirt-devel libvirt-client \
#       qemu-kvm qemu-img dnsmasq iptables-nft lvm2 device-mapper-persistent-data \
#       busybox kernel-core pkgconf-pkg-config gcc glibc-devel curl python3-pip \
#       qemu-guest-agent dropbear
# Building lab: gcc links it and needs libc6-dev for that (Debian installs gcc without it
# when recommends are off: "cannot open crtn.o"); the virt crate finds libvirt through
# pkg-config and libvirt-dev. binutils (with gcc) gives the tests objcopy.
# curl fetches install trees over http(s) (lab reads installer ISOs itself).
# qemu-storage-daemon (qemu-system-common; Fedora: qemu-img) exports stopped VMs' disks
# for an offline trim.
# What lab copies into the smoke VMs: qemu-ga (qemu-guest-agent), so `lab trim` can fstrim
# them while they run, and dropbear (dropbear-bin), their SSH server for `lab ssh`,
# provisioning steps and `lab ready`. lab runs without them (and says what the smoke VMs
# lack), but the tests need both.
# The debian-stack test's package repository (tests/support/debian-repo.sh) is made with
# apt-ftparchive (apt-utils) from Debian's packages, checked against debian-archive-keyring.
packages=(
    gcc libc6-dev libvirt-dev pkg-config
    libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
    qemu-system-x86 dnsmasq-base iptables
    lvm2 thin-provisioning-tools
    busybox-static linux-image-amd64 openssh-client
    iproute2 kmod util-linux e2fsprogs cpio xz-utils zstd nftables
    curl
    qemu-guest-agent dropbear-bin
    apt-utils debian-archive-keyring python3
)

# A package mirror that does not answer once is tried again.
retry() {
    local n
    for n in 1 2 3 4 5; do
        "$@" && return 0
        echo "$0: attempt $n of '$*' failed; trying again in $((n * 5)) s" >&2
        sleep $((n * 5))
    done
    "$@"
}

if command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    # Only what is missing: a package already there is left at its version.
    missing() {
        local p
        for p in "$@"; do
            dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' ||
                echo "$p"
        done
    }
    updated=0
    mapfile -t need < <(missing "${packages[@]}")
    if [ "${#need[@]}" -gt 0 ]; then
        retry apt-get update -qq
        updated=1
        # qemu-system-x86 first: on hosts carrying a newer qemu-utils from backports, apt
        # must be free to swap it for the one that matches qemu-system.
        retry apt-get install -y -q --no-install-recommends "${need[@]}"
    fi
    if [ -n "$(missing qemu-utils)" ]; then
        [ "$updated" -eq 1 ] || retry apt-get update -qq
        retry apt-get install -y -q --no-install-recommends qemu-utils
    fi
elif command -v dnf >/dev/null; then
    retry dnf install -y libvirt-daemon libvirt-daemon-driver-qemu libvirt-devel libvirt-client \
        qemu-kvm qemu-img dnsmasq iptables-nft lvm2 device-mapper-persistent-data \
        busybox kernel-core pkgconf-pkg-config gcc glibc-devel cpio e2fsprogs xz zstd curl \
        python3-pip qemu-guest-agent dropbear
else
    echo "$0: neither apt-get nor dnf found; install the packages listed in this script by hand" >&2
    exit 1
fi

# pykickstart's ksvalidator checks rendered kickstarts (`lab base build` validates with it;
# lab warns and builds without it, but the tests need it), from PyPI. A Python that is
# "externally managed" (Debian's own) takes it with --break-system-packages; a pyenv Python
# finds it once its shims are rehashed; where pip puts scripts elsewhere off PATH, a link in
# /usr/local/bin finds it.
if ! command -v ksvalidator >/dev/null; then
    if ! python3 -m pip --version >/dev/null 2>&1 && command -v apt-get >/dev/null; then
        retry apt-get install -y -q --no-install-recommends python3-pip
    fi
    pip_flags=(--quiet --disable-pip-version-check)
    if python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'; then
        pip_flags+=(--break-system-packages)
    fi
    retry python3 -m pip install "${pip_flags[@]}" pykickstart
    if ! command -v ksvalidator >/dev/null && command -v pyenv >/dev/null; then
        pyenv rehash
    fi
    if ! command -v ksvalidator >/dev/null; then
        scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
        if [ -x "$scripts/ksvalidator" ]; then
            ln -sf "$scripts/ksvalidator" /usr/local/bin/ksvalidator
        fi
    fi
    if ! command -v ksvalidator >/dev/null; then
        echo "$0: pykickstart is installed but its ksvalidator is not on PATH" >&2
        exit 1
    fi
fi

# libvirtd: systemd starts it where systemd runs; elsewhere (containers, CI guests) start the
# monolithic daemon and its log daemon by hand.
if [ -d /run/systemd/system ]; then
    systemctl enable --now libvirtd.service virtlogd.socket
else
    # The package scripts that create this user need systemd; libvirtd refuses to start
    # without it.
    getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
    getent group kvm >/dev/null || groupadd -r kvm
    getent passwd libvirt-qemu >/dev/null ||
        useradd -r -g libvirt-qemu -G kvm -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
    mkdir -p /run/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt
    daemons=()
    if ! { [ -f /run/virtlogd.pid ] && kill -0 "$(cat /run/virtlogd.pid)" 2>/dev/null; }; then
        daemons+=(-- virtlogd -d -p /run/virtlogd.pid)
    fi
    if ! { [ -f /run/libvirtd.pid ] && kill -0 "$(cat /run/libvirtd.pid)" 2>/dev/null; }; then
        daemons+=(-- libvirtd -d -p /run/libvirtd.pid)
    fi
    if [ "${#daemons[@]}" -gt 0 ]; then
        # Under a subreaper (scripts/subreaper.py), so the QEMU processes libvirtd kills are
        # reaped at once: libvirt waits for that, and a PID 1 that is not an init system may
        # reap late (2 s on the development machines, on every `lab reset` and `lab down`).
        if command -v python3 >/dev/null; then
            setsid python3 "$(dirname "$0")/subreaper.py" /run/lab-subreaper.pid \
                "${daemons[@]}" </dev/null >/var/log/libvirt/subreaper.log 2>&1 &
        else
            while [ "${#daemons[@]}" -gt 0 ]; do
                daemons=("${daemons[@]:1}")
                cmd=()
                while [ "${#daemons[@]}" -gt 0 ] && [ "${daemons[0]}" != -- ]; do
                    cmd+=("${daemons[0]}")
                    daemons=("${daemons[@]:1}")
                done
                "${cmd[@]}"
            done
        fi
    fi
    for _ in $(seq 1 200); do
        [ -S /run/libvirt/libvirt-sock ] && break
        sleep 0.05
    done
    [ -S /run/libvirt/libvirt-sock ] || { echo "$0: libvirtd did not come up" >&2; exit 1; }
fi

if [ "$install_lab" -eq 1 ]; then
    cd "$(dirname "$0")/.."
    cargo install --locked --path . --root /usr/local
    # `man lab`, `man lab-up`, ...: pages made from the CLI of the lab just installed.
    /usr/local/bin/lab man --dir /usr/local/share/man/man1
fi
