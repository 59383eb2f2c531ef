#!/usr/bin/env bash
# The demo-day commands killed (SIGKILL) at every point of their work, many times, on the
# real libvirtd: `lab stop`, `lab start`, `lab snapshot` and `lab restore` of a three-VM
# smoke lab, each killed after a delay that sweeps from right after start to past its end.
# After each kill the next command (`lab stop`, `lab start`, `lab up`, in turn) must finish
# the work: every VM running again, and the process started in node1 before the first round
# still alive (no VM booted afresh, no snapshot's point lost). Prints what each round saw;
# exits 1 on the first round that fails. Needs root and a running libvirtd.
#
#   ROUNDS=16 bash benches/kill-demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-12}
. benches/smoke-lab.sh
smoke_lab kd 10.252.0.0/16

"$lab" -q up "$profile" >/dev/null
pid=$("$lab" -q ssh "$profile" node1 -- \
    '(while :; do sleep 1; done) </dev/null >/dev/null 2>&1 & echo $!')
"$lab" -q snapshot "$profile" base >/dev/null
echo "a three-VM smoke lab; node1 runs process $pid; snapshot base taken"

# Every VM running, and node1's process alive.
whole() {
    "$lab" -q status "$name" --json | python3 -c '
import json, sys
lab = json.load(sys.stdin)[0]
bad = [v["name"] + " " + v["state"] for v in lab["vms"] if v["state"] != "running"]
sys.exit(f"not running: {bad}" if bad else 0)' &&
    "$lab" -q ssh "$profile" node1 -- "kill -0 $pid"
}

failed=0
for round in $(seq 1 "$rounds"); do
    delay_ms=$(( 50 + (round - 1) * 3000 / rounds ))
    case $((round % 4)) in
        1) killed=(stop "$profile"); next=(stop "$profile") ;;
        2) "$lab" -q stop "$profile" >/dev/null
           killed=(start "$profile"); next=(up "$profile" --no-provision) ;;
        3) killed=(snapshot "$profile" "k$round"); next=(start "$profile") ;;
        0) killed=(restore "$profile" base); next=(up "$profile" --no-provision) ;;
    esac
    "$lab" -q "${killed[@]}" >"$work/killed.log" 2>&1 &
    p=$!
    sleep "$(printf '%d.%03d' $((delay_ms / 1000)) $((delay_ms % 1000)))"
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    s=$(date +%s%N)
    if "$lab" -q "${next[@]}" >"$work/again.log" 2>&1 &&
        { [ "${next[0]}" != stop ] || "$lab" -q start "$profile" >>"$work/again.log" 2>&1; } &&
        whole >>"$work/again.log" 2>&1; then
        e=$(date +%s%N)
        printf 'round %2d: lab %-8s killed after %4d ms; lab %s finished it in %5d ms\n' \
            "$round" "${killed[0]}" "$delay_ms" "${next[0]}" $(( (e - s) / 1000000 ))
    else
        printf 'round %2d: lab %-8s killed after %4d ms; lab %s did NOT finish it:\n' \
            "$round" "${killed[0]}" "$delay_ms" "${next[0]}"
        sed 's/^/    /' "$work/again.log"
        failed=1
        break
    fi
    # A snapshot the kill left complete goes, so the next round's restore is of base.
    if "$lab" -q snapshot "$profile" --list --json | grep -q "\"k$round\""; then
        "$lab" -q snapshot "$profile" "k$round" --rm >/dev/null
    fi
done

"$lab" -q down "$profile" --purge >/dev/null
left=$(virsh -q -c qemu:///system list --all --name | grep -c "^lab-$name-" || true)
left_files=$(find "$work/images" -mindepth 1 2>/dev/null | wc -l)
echo "after lab down --purge: $left domains, $left_files files of the lab left"
[ "$left" -eq 0 ] && [ "$left_files" -eq 0 ] || failed=1
exit "$failed"
