#!/usr/bin/env bash
# `lab snapshot` and `lab restore` of a three-VM smoke lab on the real libvirtd: each split
# into pause (or stop), memory written, disks laid, memory read back and resume. Prints
# figures; asserts nothing. The goal (issue 18): a restore of three VMs in under 5 s plus
# the time to read their memory back. Needs root and a running libvirtd
# (scripts/setup-host.sh).
#
#   bash benches/restore.sh              # ROUNDS=3 restores
#   LAB_BIN=target/debug/lab bash benches/restore.sh   # a lab already built
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3}
. benches/smoke-lab.sh
smoke_lab rbench 10.251.0.0/16

show() { python3 benches/restore-figures.py "$@"; }

echo "lab up: three smoke VMs of 256 MiB"
"$lab" -q up "$profile" > /dev/null
echo "lab snapshot"
"$lab" -q snapshot "$profile" bench --json > "$work/snap.json"
show "$work/snap.json" paused
"$lab" snapshot "$profile" --list
for i in $(seq "$rounds"); do
    echo "lab restore, round $i"
    "$lab" -q restore "$profile" bench --json > "$work/restore.json"
    show "$work/restore.json" stopped
done
