# Sourced by the benches that drive a three-VM smoke lab on the real libvirtd
# (benches/up.sh, restore.sh, kill-up.sh, kill-demo.sh). `smoke_lab TAG AUTO_RANGE`: builds
# lab (or takes LAB_BIN), makes a work directory of the bench's own (lock, runtime
# directory, images), writes the lab's profile, and removes the lab and the directory on
# exit. Sets lab, work, profile and name.
smoke_lab() {
    local tag=$1 range=$2
    if [ -z "${LAB_BIN:-}" ]; then
        cargo build --release --quiet
        LAB_BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/lab
    fi
    lab=$(realpath "$LAB_BIN")
    work=$(mktemp -d "/var/tmp/lab-bench-$tag-XXXXXX")
    chmod 755 "$work"   # QEMU (libvirt-qemu) must reach the images
    export LAB_LOCK=$work/locks/host.lock LAB_RUNTIME_DIR=$work/run
    profile=$work/$tag.toml
    name="$tag$$"
    cat > "$profile" <<TOML
name = "$name"
[network]
auto_range = "$range"
[storage]
backend = "qcow2"
dir = "$work/images"
[base]
kernel = "host"
initrd = "busybox"
disk = "64MiB"
[[vm]]
name = "node"
count = 3
memory = "256MiB"
TOML
    trap '"$lab" -q down "$profile" --purge >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
}
