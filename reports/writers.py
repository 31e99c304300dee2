"""Streaming writers for the run directory: JSON Lines, the trace file, and
the Parquet copies of the rows (reports/tables.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

import orjson
import polars as pl

from correlator.rows import ROW_FIELDS, RowsChunk
from reports.app_rows import app_groups, json_lines
from reports.connection_lines import connection_lines
from reports.tables import (
    CONNECTIONS_SCHEMA,
    EVENTS_SCHEMA,
    ParquetTable,
    connections_frame,
    events_frame,
)
from reports.trace_lines import trace_lines

# Perfetto stays usable up to a few tens of thousands of tracks; beyond that
# the trace keeps the first ones and the summary says how many were left out.
MAX_TRACE_CONNECTIONS = 20_000


# One encoder reused: json.dumps would build it again for every line.
_json = json.JSONEncoder(separators=(",", ":"), default=str, check_circular=False).encode
# Types orjson would write its own way go to `default` (str), as with json.
# Keys other than strings make orjson raise: json writes those lines.
_OPTS = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME


def dumps(obj: Any) -> bytes:
    """Compact JSON, exactly as json.JSONEncoder writes it, about ten times faster."""
    try:
        out = orjson.dumps(obj, default=str, option=_OPTS)
    except (orjson.JSONEncodeError, TypeError):
        return _json(obj).encode()  # an int beyond 64 bits, a lone surrogate
    # Where orjson's text differs from json's: non-ASCII and DEL (json escapes
    # them) and floats below 1e-4 (json: 1e-05, orjson: 0.00001 or 1e-7). Such
    # a line is encoded by json instead, so every file stays byte for byte what
    # json wrote; a false alarm (say "e-" in a string) only costs time.
    if out.isascii() and b"e-" not in out and b"0.0000" not in out and b"\x7f" not in out:
        return out
    return _json(obj).encode()


def _event_line(row: dict[str, Any]) -> bytes:
    """dumps() for a timeline row, one more check: orjson writes NaN and
    infinities as null (json: NaN), so a row with more nulls than None values
    may hold one, or a None nested deeper (an owner without an fd): either way
    json writes it. Only the probes' and actors' own fields can carry a NaN."""
    try:
        line = orjson.dumps(row, default=str, option=_OPTS)
    except (orjson.JSONEncodeError, TypeError):
        return _json(row).encode()
    if line.isascii() and b"e-" not in line and b"0.0000" not in line and b"\x7f" not in line:
        nones = list(row.values()).count(None)
        owner = row.get("owner")
        if type(owner) is dict:
            nones += list(owner.values()).count(None)
        if line.count(b"null") == nones:
            return line
    return _json(row).encode()


class TraceWriter:
    """Chrome/Perfetto trace-event JSON, written as connections finish.

    One track (tid) per connection inside its owner's process (pid), each
    state a complete ("X") slice; counters ("C") for the state totals.
    """

    def __init__(self, path: Path, t0_ns: int, max_connections: int = MAX_TRACE_CONNECTIONS):
        self.f: IO[bytes] = open(path, "wb", buffering=1 << 20)
        self.f.write(b'{"displayTimeUnit":"ms","traceEvents":[\n')
        self.t0 = t0_ns
        self.first = True
        self.max_connections = max_connections
        self.connections = 0
        self.left_out = 0
        self.pids: dict[int, str] = {}

    def _put(self, ev: dict[str, Any]) -> None:
        self.f.write((b"" if self.first else b",\n") + dumps(ev))
        self.first = False

    def lifecycles(self, frame: pl.DataFrame) -> None:
        room = max(0, self.max_connections - self.connections)
        self.left_out += max(0, len(frame) - room)
        head = frame.head(room)
        self.connections += len(head)
        if not len(head):
            return
        lines, procs = trace_lines(head, self.t0, dumps)
        for pid, actor in procs:
            if pid not in self.pids:
                self.pids[pid] = f"{actor or 'pid'} {pid}" if pid else "unowned sockets"
        self.f.write((b"" if self.first else b",\n") + lines.str.join(",\n").cast(pl.Binary).item())
        self.first = False

    def counters(self, name: str, points: list[list[Any]], pid: int = 0) -> None:
        for t, values in points:
            self._put(
                {"ph": "C", "name": name, "pid": pid, "ts": round(t * 1e6, 3), "args": values}
            )

    def close(self, t0_matches_series: bool = True) -> None:
        for pid, name in self.pids.items():
            self._put({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": name}})
        self.f.write(b"\n]}\n")
        self.f.close()


def _needs_json(line: pl.Expr) -> pl.Expr:
    # Where polars' JSON text differs from json's: non-ASCII and DEL (json
    # escapes them) and floats below 1e-4 (json: 1e-05); a false alarm (say
    # "e-" in a string) only costs time.
    return (
        line.str.contains(r"[^\x00-\x7e]")
        | line.str.contains("e-", literal=True)
        | line.str.contains("0.0000", literal=True)
    )


def _json_text(kind: str, df: pl.DataFrame) -> pl.DataFrame:
    """(pos, line): polars' JSON of kernel rows, not checked yet."""
    return df.select("pos", line=pl.struct(ROW_FIELDS[kind]).struct.json_encode())


def _checked(kind: str, df: pl.DataFrame, enc: pl.DataFrame) -> pl.DataFrame:
    """enc (df's lines) byte for byte what json writes: the few lines where
    polars' text would differ are written by json instead."""
    odd = enc.with_row_index("i").filter(_needs_json(pl.col("line")))
    if len(odd):
        rows = df.select(ROW_FIELDS[kind])
        idx = odd["i"].to_list()
        fixed = pl.Series([_json(rows.row(i, named=True)) for i in idx], dtype=pl.String)
        enc = enc.with_columns(enc["line"].scatter(idx, fixed))
    return enc


def _plain_text(text: bytes) -> bool:
    # _needs_json over a whole text at once: no line in it can need json.
    return text.isascii() and b"e-" not in text and b"0.0000" not in text and b"\x7f" not in text


def _joined(parts: list[pl.DataFrame]) -> bytes:
    """The parts' lines in position order, one text."""
    lines = pl.concat(parts).sort("pos")["line"]
    # As bytes straight from polars: a Python str first, then encoded, cost
    # a copy and a pass more (55 ms of 120 per 92 MB of lines).
    text: bytes = lines.str.join("\n").cast(pl.Binary).item()
    return text


def _event_text(row: dict[str, Any]) -> str:
    # Every line is ASCII: orjson's only when it is, json escapes the rest.
    return _event_line(row).decode()


# connections.parquet is written this many lifecycles at a time.
_CONN_BATCH = 10_000


class RunSink:
    """The correlator's sink: events.jsonl, connections.jsonl, the trace,
    events.parquet and connections.parquet."""

    def __init__(self, run_dir: Path, trace: TraceWriter) -> None:
        self.events: IO[bytes] = open(run_dir / "events.jsonl", "wb", buffering=1 << 20)
        self.conns: IO[bytes] = open(run_dir / "connections.jsonl", "wb", buffering=1 << 20)
        self.events_table = ParquetTable(run_dir / "events.parquet")
        self.conns_table = ParquetTable(run_dir / "connections.parquet")
        self.trace = trace
        self._conn_frames: list[pl.DataFrame] = []
        self._conn_rows = 0
        self.n_events = 0
        self.n_connections = 0

    def rows(self, chunk: RowsChunk) -> None:
        # One text per chunk, the lines in position order: no Python object per
        # line. The kernel lines are checked line by line only when the whole
        # text shows something polars may write otherwise than json (rare).
        kernel = {kind: _json_text(kind, df) for kind, df in chunk.kernel.items()}
        groups = app_groups(chunk.app)
        app = [json_lines(chunk.app, groups, _event_text)] if chunk.app else []
        n = sum(len(p) for p in kernel.values()) + len(chunk.app)
        if n:
            text = _joined([*kernel.values(), *app])
            if not _plain_text(text):
                checked = [_checked(k, chunk.kernel[k], enc) for k, enc in kernel.items()]
                text = _joined([*checked, *app])
            self.events.write(text + b"\n")
        self.n_events += n
        self.events_table.append(events_frame(chunk, groups))

    def connections(self, frame: pl.DataFrame) -> None:
        """A chunk's finished lifecycles (correlator/connection_schema.py)."""
        if not len(frame):
            return
        self.conns.write(connection_lines(frame))
        self.n_connections += len(frame)
        self.trace.lifecycles(frame)
        self._conn_frames.append(frame)
        self._conn_rows += len(frame)
        if self._conn_rows >= _CONN_BATCH:
            self._conns_out()

    def _conns_out(self) -> None:
        if self._conn_frames:
            frame = pl.concat(self._conn_frames, how="diagonal_relaxed")
            self.conns_table.append(connections_frame(frame))
            self._conn_frames = []
            self._conn_rows = 0

    def close(self, complete: bool = True) -> None:
        self.events.close()
        self.conns.close()
        if complete:
            self._conns_out()
            self.events_table.close(EVENTS_SCHEMA)
            self.conns_table.close(CONNECTIONS_SCHEMA)
        else:
            self.events_table.discard()
            self.conns_table.discard()
