"""events.parquet and connections.parquet: the run's rows as typed columns.

The same rows as events.jsonl and connections.jsonl, for DuckDB, polars or
pandas to query directly (docs/report.md shows how). Written chunk by chunk
as Arrow IPC parts beside the run, then streamed into one Parquet file each
at the end, so memory stays bounded by a chunk.

events.parquet: one row per event, every type in one table; a column a type
does not have is null (`owner_*` only for tcp_state, `epfd` only for epoll,
...). An app record's own fields that have no column here are in `fields`,
a JSON object.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import orjson
import polars as pl

from correlator.conn_internals import FIELDS as INTERNALS_FIELDS
from correlator.connection_schema import ACTION, FLAT_COLUMNS, STATE
from correlator.rows import RowsChunk
from reports.app_rows import AppGroup, app_groups, odd_json
from reports.connection_lines import app_object

INTERNALS_PREFIX = "internals_"

EVENTS_SCHEMA: dict[str, Any] = {
    "ts": pl.Int64,
    "t": pl.Float64,
    "phase": pl.String,
    "src": pl.String,
    "type": pl.String,
    "conn": pl.Int64,
    # tcp_state
    "old": pl.String,
    "new": pl.String,
    "skaddr": pl.UInt64,
    "saddr": pl.String,
    "sport": pl.Int64,
    "daddr": pl.String,
    "dport": pl.Int64,
    "cpu_pid": pl.Int64,
    "cpu_comm": pl.String,
    "owner_actor": pl.String,
    "owner_pid": pl.Int64,
    "owner_fd": pl.Int64,
    "owner_via": pl.String,
    "cpu_is_owner": pl.Boolean,
    # accept, epoll and app records
    "pid": pl.Int64,
    "actor": pl.String,
    "tid": pl.Int64,
    "syscall": pl.String,
    "fd": pl.Int64,
    "lfd": pl.Int64,
    "error": pl.String,
    "peer_addr": pl.String,
    "peer_port": pl.Int64,
    "epfd": pl.Int64,
    "ready": pl.Int64,
    "timeout_ms": pl.Int64,
    "dur_ns": pl.Int64,
    # app records
    "laddr": pl.String,
    "lport": pl.Int64,
    "raddr": pl.String,
    "rport": pl.Int64,
    "fields": pl.String,
}
_APP_COLUMNS = [k for k in EVENTS_SCHEMA if k not in ("fields",)]
# An app record's bool would pass as an int column: booleans stay in `fields`.
_APP_COLUMNS.remove("cpu_is_owner")
_STRING_COLUMNS = {k for k, t in EVENTS_SCHEMA.items() if t == pl.String}
_APP_SET = set(_APP_COLUMNS)

CONNECTIONS_SCHEMA: dict[str, Any] = {
    **FLAT_COLUMNS,
    "states": pl.List(STATE),
    "app": pl.String,  # JSON object: app event -> count
    "actions": pl.List(ACTION),
    # Two-host runs (reports/snapshots.py's LinkSink): where each end lives
    # and what its handshake negotiated (a JSON object).
    "host": pl.String,
    "peer_host": pl.String,
    "tcp_info": pl.String,
    # Runs with the TCP internals probes (reports/conn_internals.py): the
    # connection's retransmits, congestion, windows, resets and error.
    **{INTERNALS_PREFIX + k: t for k, t in INTERNALS_FIELDS.items()},
}


def _fields_text(rest: dict[str, Any]) -> str:
    """An app record's fields without a column, as a JSON object."""
    try:
        return orjson.dumps(rest, default=str).decode()
    except (orjson.JSONEncodeError, TypeError):  # an int beyond 64 bits
        return json.dumps(rest, separators=(",", ":"), default=str)


def _app_frame(app: list[tuple[int, dict[str, Any]]]) -> pl.DataFrame:
    """App rows: each field that fits a column of the same name goes there,
    the others (and any that do not fit its type) into `fields`."""
    m = len(app)
    cols: dict[str, list[Any]] = {k: [None] * m for k in _APP_COLUMNS}
    fields: list[str | None] = [None] * m
    pos: list[int] = []
    strings = _STRING_COLUMNS
    for i, (p, row) in enumerate(app):
        pos.append(p)
        rest: dict[str, Any] = {}
        for k, v in row.items():
            col = cols.get(k)
            if col is None or v is None:
                if col is None:
                    rest[k] = v
            elif k in strings:
                if isinstance(v, str):
                    col[i] = v
                else:
                    rest[k] = v
            elif k == "t":
                col[i] = v
            elif type(v) is int and -(1 << 63) <= v < (1 << 63):
                col[i] = v
            else:
                rest[k] = v
        if rest:
            fields[i] = _fields_text(rest)
    schema = {"pos": pl.Int64, **{k: EVENTS_SCHEMA[k] for k in _APP_COLUMNS}, "fields": pl.String}
    return pl.DataFrame({"pos": pos, **cols, "fields": fields}, schema=schema, strict=False)


def _group_frame(app: list[tuple[int, dict[str, Any]]], g: AppGroup) -> pl.DataFrame:
    """_app_frame() of a group's rows, a column at a time: a key's column
    fits (or goes whole into `fields`) for every row alike, since the group
    holds one type per key; else (a misfit beside nulls, an odd `t`) row by row."""
    frame = g.frame
    rows = [app[i] for i in g.at]
    if frame is None:
        return _app_frame(rows)
    cols: list[pl.Expr] = []
    rest: list[str] = []
    for k, dt in frame.schema.items():
        if k not in _APP_SET:
            rest.append(k)
        elif dt == pl.Null or (k == "t" and dt in (pl.Float64, pl.Int64)):
            cols.append(pl.col(k).cast(EVENTS_SCHEMA[k]))
        elif k == "t":
            return _app_frame(rows)
        elif dt == EVENTS_SCHEMA[k]:
            cols.append(pl.col(k))
        elif frame[k].null_count():
            return _app_frame(rows)
        else:
            rest.append(k)
    if rest:
        fields = frame.select(pl.struct(rest).struct.json_encode().alias("fields"))["fields"]
        odd = fields.to_frame().with_row_index("j").filter(odd_json(pl.col("fields")))["j"]
        if len(odd):
            fixed = [_fields_text({k: rows[j][1][k] for k in rest}) for j in odd.to_list()]
            fields = fields.scatter(odd, pl.Series(fixed, dtype=pl.String))
    else:
        fields = pl.Series("fields", [None] * len(frame), dtype=pl.String)
    pos = pl.Series("pos", [p for p, _ in rows], dtype=pl.Int64)
    return frame.select(cols).with_columns(pos, fields)


def events_frame(chunk: RowsChunk, groups: list[AppGroup] | None = None) -> pl.DataFrame:
    """The chunk's rows in events.parquet's columns (`groups`: the chunk's
    app_groups(), when the caller has them already)."""
    frames = []
    for kind, df in chunk.kernel.items():
        if kind == "tcp_state":
            df = df.with_columns(
                owner_actor=pl.col("owner").struct.field("actor"),
                owner_pid=pl.col("owner").struct.field("pid"),
                owner_fd=pl.col("owner").struct.field("fd"),
                owner_via=pl.col("owner").struct.field("via"),
            ).drop("owner")
        frames.append(df)
    if chunk.app:
        for g in app_groups(chunk.app) if groups is None else groups:
            frames.append(_group_frame(chunk.app, g))
    df = pl.concat(frames, how="diagonal_relaxed").sort("pos")
    return df.select(
        [
            pl.col(k).cast(t) if k in df.columns else pl.lit(None, dtype=t).alias(k)
            for k, t in EVENTS_SCHEMA.items()
        ]
    )


def connections_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """The lifecycles' frame (correlator/connection_schema.py) flattened to
    connections.parquet's columns."""
    dest = pl.col("dest").struct
    owner = pl.col("owner").struct
    made = {
        "dest_addr": dest.field("addr"),
        "dest_port": dest.field("port"),
        "owner_actor": owner.field("actor"),
        "owner_pid": owner.field("pid"),
        "owner_fd": owner.field("fd"),
        "owner_via": owner.field("via"),
        "states": pl.col("states").list.eval(
            pl.element().struct.with_fields(pl.field("timewait").fill_null(False))
        ),
        "app": app_object(),
    }
    return frame.select(
        [
            (made[k] if k in made else pl.col(k) if k in frame.columns else pl.lit(None))
            .cast(t)
            .alias(k)
            for k, t in CONNECTIONS_SCHEMA.items()
        ]
    )


class ParquetTable:
    """Frames appended as IPC parts, one Parquet file at close."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.parts = path.with_name(path.name + ".parts")
        shutil.rmtree(self.parts, ignore_errors=True)
        self.parts.mkdir()
        self.n = 0
        self.empty: pl.DataFrame | None = None

    def append(self, df: pl.DataFrame) -> None:
        if self.empty is None:
            self.empty = df.clear()
        if len(df):
            df.write_ipc(self.parts / f"{self.n:06d}.arrow")
            self.n += 1

    def close(self, schema: dict[str, Any]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        if self.n:
            pl.scan_ipc(sorted(self.parts.glob("*.arrow"))).sink_parquet(tmp)
        else:
            pl.DataFrame(schema=schema).write_parquet(tmp)
        tmp.replace(self.path)
        shutil.rmtree(self.parts, ignore_errors=True)

    def discard(self) -> None:
        shutil.rmtree(self.parts, ignore_errors=True)
