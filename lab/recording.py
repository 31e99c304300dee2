"""The run directory and the files the run itself writes there: the raw
recording (every accepted events-channel frame, as it arrived, so that
`tcplab report RUN_DIR` can rebuild every output later) and run.json.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

RECORDING = "recording.msgpack"
RUN_META = "run.json"


class Recorder:
    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / RECORDING
        self._file = open(self.path, "ab", buffering=1 << 20)
        self.frames = 0
        self.bytes = 0

    def append(self, frame: bytes) -> None:
        # Frames are self-delimiting msgpack arrays: concatenation is a stream.
        self._file.write(frame)
        self.frames += 1
        self.bytes += len(frame)

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def write_meta(run_dir: Path, meta: dict[str, Any]) -> None:
    tmp = run_dir / (RUN_META + ".tmp")
    try:
        tmp.write_text(json.dumps(meta, indent=2, default=str))
        tmp.replace(run_dir / RUN_META)
    except OSError:
        tmp.unlink(missing_ok=True)  # a half-written file is no run.json
        raise


def unique_run_dir(runs_dir: Path, name: str) -> Path:
    """A new directory runs/<time>-<name>, -2, -3, ... when that second is taken.

    mkdir is the arbiter, so two runs started at once (even by two processes)
    never share a directory."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    base = f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{name}"
    for n in range(1, 1000):
        path = runs_dir / (base if n == 1 else f"{base}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"{runs_dir}: 999 runs of {name} in one second")
