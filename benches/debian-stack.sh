#!/usr/bin/env bash
# `lab up debian-stack` on the real libvirtd, split into download, clone, seed, define,
# boot to lease, cloud-init and provisioning, and lab's own part; then `lab restore` of the
# `provisioned` snapshot `lab up` took (three Debian VMs, 2 GiB of memory together), split
# as benches/restore.sh splits the smoke lab's. Prints figures; asserts nothing. Needs root and a running libvirtd (scripts/setup-host.sh).
#
#   bash benches/debian-stack.sh
#
# What it brings up is the shipped profile with its image and apt source pointed at the
# host, as tests/debian_stack.rs does: the tests' Debian 12 cloud image
# (tests/support/debian-image.sh) served over HTTP with its SHA512SUMS, downloaded into an
# empty image cache of its own, and the local repository of the packages the steps install
# (tests/support/debian-repo.sh), read by the VMs' apt at their gateway. The download is
# timed by the server (from the request to the last byte sent), so it is told apart from
# the import inside lab's "base".
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
lab=${CARGO_TARGET_DIR:-$PWD/target}/release/lab
image=$(bash tests/support/debian-image.sh)
repo=$(bash tests/support/debian-repo.sh "$(dirname "$image")")

work=$(mktemp -d /var/tmp/lab-bench-stack-XXXXXX)
chmod 755 "$work"   # QEMU (libvirt-qemu) must reach the images
export LAB_LOCK=$work/lab.lock LAB_IMAGE_CACHE=$work/cache
profile=$work/stack.toml
mkdir -p "$work/www"
ln -s "$(dirname "$image")" "$work/www/image"
ln -s "$repo" "$work/www/repo"

# The server: Python's, on every address (the VMs come from the lab network), each request
# logged with the seconds it took.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("0.0.0.0", 0)); print(s.getsockname()[1])')
python3 - "$work/www" "$port" "$work/served.log" <<'PY' &
import functools, http.server, sys, time

root, port, log = sys.argv[1], int(sys.argv[2]), open(sys.argv[3], "a", buffering=1)

class Handler(http.server.SimpleHTTPRequestHandler):
    def handle_one_request(self):
        t = time.monotonic()
        super().handle_one_request()
        if getattr(self, "path", None):
            log.write(f"{self.client_address[0]} {self.path} {time.monotonic() - t:.3f}\n")

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(
    ("0.0.0.0", port), functools.partial(Handler, directory=root)
).serve_forever()
PY
server=$!
trap '"$lab" -q down "$profile" --purge >/dev/null 2>&1 || true; kill $server 2>/dev/null || true; rm -rf "$work"' EXIT

# The shipped profile, its image, checksum file and apt source pointed here.
write_profile() {
    python3 - "$work" "$port" "$1" "$(basename "$image")" >"$profile" <<'PY'
import re, sys
work, port, gateway, image = sys.argv[1:]
text = open("profiles/debian-stack.toml").read()
text = text.replace('name = "debian-stack"', f'name = "bench{port}"', 1)
text = re.sub(r'(?m)^image = .*$', f'image = "http://127.0.0.1:{port}/image/{image}"', text)
text = re.sub(r'(?m)^checksum_url = .*$', f'checksum_url = "http://127.0.0.1:{port}/image/SHA512SUMS"', text)
text = re.sub(r'(?m)^disk = .*$', 'disk = "4GiB"', text)
text = re.sub(r'(?ms)^apt_sources = """.*?"""$',
              f'apt_sources = "deb [trusted=yes] http://{gateway}:{port}/repo/ ./"', text)
text = text.replace('[storage]\nbackend = "auto"',
                    f'[storage]\nbackend = "qcow2"\ndir = "{work}/images"')
text = text.replace('[network]\n', '[network]\nauto_range = "10.246.0.0/16"\n', 1)
print(text, end="")
PY
}
write_profile 0.0.0.0
gateway=$("$lab" up "$profile" --dry-run --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["network"]["gateway"])')
write_profile "$gateway"

echo "lab up debian-stack (empty image cache, three emulated guests)"
"$lab" -q up "$profile" --timeout 1200 --json >"$work/up.json"
python3 - "$work/up.json" "$work/served.log" "$(basename "$image")" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
served = [l.split() for l in open(sys.argv[2])]
download = sum(float(s) for ip, path, s in served if path.startswith("/image/")) * 1000
t = r["timings_ms"]
vms = r["vms"]
def most(key):
    return max(v["timings_ms"][key] for v in vms)
print(f"  download (image and SHA512SUMS, timed by the server): {download:.0f} ms")
print(f"  base: {t['base']} ms, of which verify and import {max(t['base'] - download, 0):.0f} ms")
print(f"  plan {t['observe_and_plan']} ms, network {t['network']} ms")
for v in vms:
    vt = v["timings_ms"]
    print(f"  {v['name']}: clone {vt['disk']} ms, seed {vt['seed']} ms, define {vt['define']} ms, "
          f"start {vt['start']} ms, boot to lease {vt['ready'] / 1000:.1f} s, "
          f"cloud-init {vt['cloud_init'] / 1000:.1f} s")
steps = {vm: sum(s["ms"] for s in st) for vm, st in r["provision"].items()}
print(f"  provisioning {t['provision'] / 1000:.1f} s (slowest VM; " +
      ", ".join(f"{vm} {ms / 1000:.1f} s" for vm, ms in steps.items()) + ")")
own = t["observe_and_plan"] + t["network"] + t["boot_files"] + max(
    v["timings_ms"]["disk"] + v["timings_ms"]["seed"] + v["timings_ms"]["define"] + v["timings_ms"]["start"]
    for v in vms)
print(f"  lab's own part (plan, network, clone, seed, define, start; not the base): {own} ms (goal: under 1000 ms)")
print(f"  total {t['total'] / 1000:.1f} s")
PY

for i in $(seq "${ROUNDS:-3}"); do
    echo "lab restore provisioned, round $i (three Debian VMs with their services)"
    "$lab" -q restore "$profile" provisioned --json >"$work/restore.json"
    python3 benches/restore-figures.py "$work/restore.json" stopped
    t0=$(date +%s%N)
    "$lab" -q ready "$profile" >/dev/null
    echo "  lab ready after it (the page through web, app and db): $(( ($(date +%s%N) - t0) / 1000000 )) ms"
done
"$lab" snapshot "$profile" --list
