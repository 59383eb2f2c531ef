#!/usr/bin/env bash
# `lab up` of a three-VM smoke lab on the real libvirtd, split into lab's own steps and the
# guests' boot; then a no-op `lab up` and `lab reset` of one VM. Prints figures; asserts
# nothing. Needs root and a running libvirtd (scripts/setup-host.sh).
#
#   bash benches/up.sh            # RUNS=3 no-op runs
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/smoke-lab.sh
smoke_lab bench 10.252.0.0/16

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

echo "lab up (fresh: network, boot files, base, three clones, three emulated guests)"
"$lab" -q up "$profile" --json > "$work/up.json"
python3 - "$work/up.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
t = r["timings_ms"]
vms = r["vms"]
disk = max(v["timings_ms"]["disk"] for v in vms)
define = max(v["timings_ms"]["define"] for v in vms)
start = max(v["timings_ms"]["start"] for v in vms)
ready = max(v["timings_ms"]["ready"] for v in vms)
own = t["observe_and_plan"] + t["network"] + t["boot_files"] + t["base"] + disk + define
print(f"  plan {t['observe_and_plan']} ms, network {t['network']} ms, boot files {t['boot_files']} ms, base {t['base']} ms")
print(f"  per VM (slowest, in parallel): clone {disk} ms, define {define} ms, start {start} ms, boot to ready {ready} ms")
print(f"  lab's own overhead (plan..define): {own} ms (goal: under 1000 ms); with QEMU start: {own + start} ms")
print(f"  total {t['total']} ms")
PY

echo "no-op lab up (the lab is up)"
for i in 1 2 3; do
    s=$(now_ms); "$lab" -q up "$profile" > /dev/null; e=$(now_ms)
    echo "  run $i: $((e - s)) ms (goal: under 500 ms)"
done

echo "lab reset of one VM"
s=$(now_ms); "$lab" -q reset "$profile" node2 --json > "$work/reset.json"; e=$(now_ms)
python3 - "$work/reset.json" "$((e - s))" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))[0]["timings_ms"]
total = int(sys.argv[2])
print(f"  total {total} ms: disk {v['disk']} ms, start {v['start']} ms, boot to ready {v['ready']} ms")
print(f"  lab's part (all but boot to ready): {total - v['ready']} ms (goal: under 2000 ms)")
PY
