#!/usr/bin/env bash
# `lab up` killed (SIGKILL) at every point of its work, many times, on the real libvirtd:
# after each kill the next `lab up` must finish the lab, and at the end `lab down --purge`
# must leave nothing. The kill delays sweep from right after start to the guests' boot, so
# they land in planning, network creation, boot files, base, clones (three VMs in
# parallel), defines and starts. Prints what each round saw; exits 1 on the first round
# whose `lab up` did not finish the lab. Needs root and a running libvirtd.
#
#   ROUNDS=20 bash benches/kill-up.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-12}
. benches/smoke-lab.sh
smoke_lab kill 10.251.0.0/16

failed=0
for round in $(seq 1 "$rounds"); do
    # Delays from 20 ms to about 1.5 s: lab's own part of `lab up` is under a second.
    delay_ms=$(( 20 + (round - 1) * 1500 / rounds ))
    "$lab" -q up "$profile" --no-provision --timeout 120 >"$work/killed.log" 2>&1 &
    pid=$!
    sleep "$(printf '0.%03d' "$delay_ms")"
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    s=$(date +%s%N)
    if "$lab" -q up "$profile" --no-provision --timeout 300 >"$work/again.log" 2>&1; then
        e=$(date +%s%N)
        printf 'round %2d: killed after %4d ms; the next lab up finished the lab in %5d ms\n' \
            "$round" "$delay_ms" $(( (e - s) / 1000000 ))
    else
        printf 'round %2d: killed after %4d ms; the next lab up FAILED:\n' "$round" "$delay_ms"
        sed 's/^/    /' "$work/again.log"
        failed=1
        break
    fi
    # Every round starts again without the lab, every other one without its base and boot
    # files too, so kills land in network, boot files, base, clones, defines and starts.
    if [ $((round % 2)) -eq 1 ]; then
        "$lab" -q down "$profile" --purge >/dev/null
    else
        "$lab" -q down "$profile" >/dev/null
    fi
done

"$lab" -q down "$profile" --purge >/dev/null
left=$(virsh -q -c qemu:///system list --all --name | grep -c "^lab-$name-" || true)
left_nets=$(virsh -q -c qemu:///system net-list --all --name | grep -c "^lab-$name" || true)
left_files=$(find "$work/images" -mindepth 1 2>/dev/null | wc -l)
echo "after lab down --purge: $left domains, $left_nets networks, $left_files files of the lab left"
[ "$left" -eq 0 ] && [ "$left_nets" -eq 0 ] && [ "$left_files" -eq 0 ] || failed=1
exit "$failed"
