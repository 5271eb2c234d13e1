#!/usr/bin/env python3
"""Records how many copies of itself run at once, under flock, in $COUNT_DIR:
`current` is the number running now, `max` the most ever seen."""

import fcntl
import os
import sys
import time
from pathlib import Path

folder = Path(os.environ["COUNT_DIR"])


def update(delta: int) -> None:
    with open(folder / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current_file, max_file = folder / "current", folder / "max"
        current = int(current_file.read_text() or 0) if current_file.exists() else 0
        current += delta
        current_file.write_text(str(current))
        highest = int(max_file.read_text()) if max_file.exists() else 0
        max_file.write_text(str(max(highest, current)))


update(+1)
try:
    time.sleep(float(os.environ.get("SLEEP", "1")))
finally:
    update(-1)
sys.stdout.write("done\n")
