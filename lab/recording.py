"""The raw recording of a run: every accepted events-channel frame, as it
arrived, so that `tcplab report RUN_DIR` can rebuild every output later.
"""

from __future__ import annotations

import json
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
