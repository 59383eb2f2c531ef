#!/bin/sh
# Wall time of `lab check --no-throughput` (several runs: min, median, max) and of the
# storage throughput probe alone, on this machine, with a release build. Prints figures;
# it is not a test and asserts nothing.
#
#   benches/check.sh                 # 7 runs, probe in a fresh temporary directory
#   RUNS=15 STORAGE=/srv/lab benches/check.sh
set -eu
cd "$(dirname "$0")/.."

RUNS=${RUNS:-7}
PROBES=${PROBES:-3}
scratch=""
if [ -z "${STORAGE:-}" ]; then
    scratch=$(mktemp -d)
    STORAGE=$scratch
fi
trap '[ -n "$scratch" ] && rm -rf "$scratch"' EXIT

cargo build --release --quiet
lab=target/release/lab

now_ns() { date +%s%N; }

# Sorted milliseconds on stdin -> "min X ms, median Y ms, max Z ms (N runs)".
summary() {
    sort -n | awk '{ v[NR] = $1 }
        END { printf "min %d ms, median %d ms, max %d ms (%d runs)\n", v[1], v[int((NR + 1) / 2)], v[NR], NR }'
}

echo "lab check --no-throughput --storage $STORAGE"
i=0
while [ "$i" -lt "$RUNS" ]; do
    start=$(now_ns)
    "$lab" check --no-throughput --storage "$STORAGE" >/dev/null 2>&1 || true
    end=$(now_ns)
    echo $(( (end - start) / 1000000 ))
    i=$((i + 1))
done | summary

echo
echo "throughput probe alone (storage.throughput, from the report's facts)"
i=0
while [ "$i" -lt "$PROBES" ]; do
    json=$("$lab" check --json --storage "$STORAGE" 2>/dev/null || true)
    seconds=$(printf '%s\n' "$json" | sed -n 's/^ *"probe_seconds": \([0-9.]*\).*/\1/p' | head -n1)
    rate=$(printf '%s\n' "$json" | sed -n 's/^ *"mb_per_s": \([0-9.]*\).*/\1/p' | head -n1)
    method=$(printf '%s\n' "$json" | sed -n 's/^ *"method": "\([a-z-]*\)".*/\1/p' | head -n1)
    if [ -z "$seconds" ]; then
        echo "  run $((i + 1)): no figure ($(printf '%s\n' "$json" | grep -A2 '"storage.throughput"' | sed -n 's/^ *"summary": //p'))"
    else
        printf '  run %d: %.2f s, %.0f MB/s (%s)\n' "$((i + 1))" "$seconds" "$rate" "$method"
    fi
    i=$((i + 1))
done
