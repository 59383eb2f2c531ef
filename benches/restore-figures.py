"""One line of figures from `lab snapshot --json` or `lab restore --json` (benches/restore.sh,
benches/debian-stack.sh): python3 benches/restore-figures.py REPORT.json paused|stopped"""
import json
import sys

t = json.load(open(sys.argv[1]))["timings_ms"]
first = sys.argv[2]
print(f"  {first} {t['pause']} ms, memory written {t['save']} ms, disks {t['disks']} ms, "
      f"memory read back {t['restore']} ms, resumed {t['resume']} ms, "
      f"answering on SSH {t['answer']} ms; total {t['total']} ms "
      f"(without reading memory back: {t['total'] - t['restore']} ms)")
