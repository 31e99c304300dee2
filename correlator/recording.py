"""Read a run directory: the raw recording (streamed) and run.json.

The recording is the orchestrator's append-only log of accepted bus frames,
each written exactly as bus.schema.encode made it. Frames are found with
msgpack's skip() (no objects built) and validated by BusLedger.accept, so
the contract's own decoder judges every frame. A damaged frame is counted
and skipped: the reader looks for the next frame header and carries on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from bus.schema import MAX_FRAME_BYTES, VERSION, BusLedger, Envelope
from correlator.errors import NoRecordingError, RunMetaError

RECORDING = "recording.msgpack"
RUN_META = "run.json"
# Every frame starts with a 6-element fixarray followed by the version int.
FRAME_HEAD = bytes([0x96, VERSION])
_CHUNK = 1 << 20


@dataclass
class RecordingStats:
    """What reading the recording cost: nothing here is silent."""

    bytes: int = 0
    frames: int = 0
    corrupt_frames: int = 0  # damaged regions, each counted once and skipped
    skipped_bytes: int = 0
    truncated_tail: bool = False
    # The newest envelope time read: where a recording cut short ends.
    last_mono_ns: int | None = None
    ledger: BusLedger = field(default_factory=BusLedger)

    def summary(self) -> dict[str, Any]:
        led = self.ledger.summary()
        return {
            "bytes": self.bytes,
            "frames": self.frames,
            "corrupt_frames": self.corrupt_frames,
            "skipped_bytes": self.skipped_bytes,
            "truncated_tail": self.truncated_tail,
            "rejected": led["rejected"],
            "rejected_samples": led["rejected_samples"][:5],
            "gaps": led["gaps"][:20],
            "gap_count": len(led["gaps"]),
            "senders": led["senders"],
        }


def recording_path(run_dir: Path) -> Path:
    if not run_dir.is_dir():
        raise NoRecordingError(
            f"{run_dir} is not a directory: pass a run directory such as runs/<time>-<scenario>"
        )
    path = run_dir / RECORDING
    if not path.is_file():
        raise NoRecordingError(
            f"{run_dir} has no {RECORDING}: run `tcplab run SCENARIO` to record one, "
            "or pass a run directory that has one"
        )
    return path


def read_run_meta(run_dir: Path) -> dict[str, Any]:
    """run.json as a dict; {} when absent (a recording alone is enough)."""
    path = run_dir / RUN_META
    if not path.exists():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunMetaError(
            f"{path} is not readable JSON ({e}): fix it or move it away to report without it"
        ) from None
    if not isinstance(meta, dict):
        raise RunMetaError(f"{path} is not a JSON object: fix it or move it away")
    return meta


class RecordingReader:
    """Iterate the valid envelopes of a recording, in file (arrival) order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stats = RecordingStats()

    def __iter__(self) -> Iterator[Envelope]:
        with open(self.path, "rb") as f:
            fd = f.fileno()
            size = os.fstat(fd).st_size
            self.stats.bytes = size
            offset = 0
            while offset < size:
                # Fast path: one unpacker walks frame after frame until one fails.
                f.seek(offset)
                unpacker = msgpack.Unpacker(
                    f, max_buffer_size=MAX_FRAME_BYTES + 1024, read_size=_CHUNK
                )
                base = offset
                while offset < size:
                    try:
                        unpacker.skip()
                    except Exception:  # msgpack raises several types on damaged input
                        break
                    end = base + unpacker.tell()
                    env = self.stats.ledger.accept(os.pread(fd, end - offset, offset))
                    if env is None:
                        break
                    self.stats.frames += 1
                    last = self.stats.last_mono_ns
                    if last is None or env.mono_ns > last:
                        self.stats.last_mono_ns = env.mono_ns
                    offset = end
                    yield env
                if offset >= size:
                    return
                self.stats.corrupt_frames += 1
                nxt = self._resync(fd, offset + 1, size)
                if nxt == size and os.pread(fd, 2, offset) == FRAME_HEAD:
                    # Nothing valid follows a frame that starts well: the writer
                    # was cut off mid-frame (a crash or Ctrl-C), the tail is lost.
                    self.stats.truncated_tail = True
                self.stats.skipped_bytes += nxt - offset
                offset = nxt

    def _frame_end(self, fd: int, offset: int, size: int) -> int | None:
        """End offset of the msgpack object at `offset`, or None if there is none."""
        unpacker = msgpack.Unpacker(max_buffer_size=MAX_FRAME_BYTES + 1024)
        pos = offset
        while pos < size and pos - offset <= MAX_FRAME_BYTES:
            unpacker.feed(os.pread(fd, min(_CHUNK, size - pos), pos))
            pos += _CHUNK
            try:
                unpacker.skip()
            except msgpack.OutOfData:
                continue
            except Exception:
                return None
            return offset + unpacker.tell()
        return None

    def _resync(self, fd: int, start: int, size: int) -> int:
        """Offset of the next decodable frame at or after `start`, else `size`."""
        pos = start
        while pos < size:
            block = os.pread(fd, _CHUNK + 1, pos)
            i = block.find(FRAME_HEAD)
            while i != -1:
                cand = pos + i
                end = self._frame_end(fd, cand, size)
                if end is not None and self._valid(fd, cand, end):
                    return cand
                i = block.find(FRAME_HEAD, i + 1)
            pos += _CHUNK
        return size

    @staticmethod
    def _valid(fd: int, start: int, end: int) -> bool:
        # A throwaway ledger: candidates that fail are part of the damaged region.
        return BusLedger().accept(os.pread(fd, end - start, start)) is not None
