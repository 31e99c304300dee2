"""What every bench section shares: where builds and results go, the error
a section raises when it cannot run, progress lines, the machine's name.

The rest is split by job: bench/pairs.py (the result row, paired runs and
their spread: what a row reports), bench/procs.py (the processes a section
runs: peers, gates, reaping, the idle spinners), bench/builds.py (the
compiled peers), bench/table.py (printing the table).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BUILD = HERE / "build"  # git-ignored: compiled peers
OUT = HERE / "out"  # git-ignored: results, recordings, run directories
PY = sys.executable


class BenchError(RuntimeError):
    """A bench section cannot run; the message says what is missing."""


def log(msg: str) -> None:
    """Progress on stderr, so a person sees where a 10-minute run is."""
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def machine() -> dict[str, str]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": str(os.cpu_count()), "kernel": os.uname().release, "cpu": cpu}
