"""The finished lifecycles as one polars frame: what the correlator hands its
sink per chunk (correlator/lifecycle_rows.py builds it; reports/writers.py
writes connections.jsonl, the trace and connections.parquet from it).

One column per key of a connections.jsonl row, in its order; its nested
values as struct and list columns:
- `dest`: {addr, port} (the row's [addr, port]),
- `owner`: {actor, pid, fd, via}, null when no owner is known,
- `states`: [{state, start_ns, dur_ns, cpu_pid, timewait}], `timewait` true
  on the timewait socket's FIN_WAIT2 and null elsewhere (the row has the key
  only where it is true),
- `app`: [{event, n}] in the order each event first happened (the row's
  {event: n}),
- `actions`: [{ts_ns, event}] (the row's [[ts_ns, event], ...]).
"""

from __future__ import annotations

from typing import Any

import polars as pl

DEST = pl.Struct({"addr": pl.String, "port": pl.Int64})
OWNER = pl.Struct({"actor": pl.String, "pid": pl.Int64, "fd": pl.Int64, "via": pl.String})
STATE = pl.Struct(
    {
        "state": pl.String,
        "start_ns": pl.Int64,
        "dur_ns": pl.Int64,
        "cpu_pid": pl.Int64,
        "timewait": pl.Boolean,
    }
)
APP = pl.Struct({"event": pl.String, "n": pl.Int64})
ACTION = pl.Struct({"ts_ns": pl.Int64, "event": pl.String})

# The scalar columns of a connection, flat (the owner's and destination's
# fields as columns of their own): the engine's finished-lives frame and
# connections.parquet both start with these.
FLAT_COLUMNS: dict[str, Any] = {
    "id": pl.Int64,
    "kind": pl.String,
    "role": pl.String,
    "outcome": pl.String,
    "laddr": pl.String,
    "lport": pl.Int64,
    "raddr": pl.String,
    "rport": pl.Int64,
    "dest_addr": pl.String,
    "dest_port": pl.Int64,
    "family": pl.Int64,
    "skaddr": pl.UInt64,
    "start_ns": pl.Int64,
    "end_ns": pl.Int64,
    "t_start": pl.Float64,
    "duration_ns": pl.Int64,
    "closed_in_run": pl.Boolean,
    "timewait_from": pl.String,
    "first_old": pl.String,
    "last_state": pl.String,
    "owner_actor": pl.String,
    "owner_pid": pl.Int64,
    "owner_fd": pl.Int64,
    "owner_via": pl.String,
    "first_cpu_pid": pl.Int64,
    "transitions_dropped": pl.Int64,
    "accepted": pl.Boolean,
    "app_closed": pl.Boolean,
    "error": pl.String,
    "phase": pl.String,
}

CONNECTION_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.Int64(),
    "kind": pl.String(),
    "role": pl.String(),
    "outcome": pl.String(),
    "laddr": pl.String(),
    "lport": pl.Int64(),
    "raddr": pl.String(),
    "rport": pl.Int64(),
    "dest": DEST,
    "family": pl.Int64(),
    "skaddr": pl.UInt64(),
    "start_ns": pl.Int64(),
    "end_ns": pl.Int64(),
    "t_start": pl.Float64(),
    "duration_ns": pl.Int64(),
    "closed_in_run": pl.Boolean(),
    "timewait_from": pl.String(),
    "first_old": pl.String(),
    "last_state": pl.String(),
    "owner": OWNER,
    "first_cpu_pid": pl.Int64(),
    "states": pl.List(STATE),
    "transitions_dropped": pl.Int64(),
    "accepted": pl.Boolean(),
    "app_closed": pl.Boolean(),
    "error": pl.String(),
    "app": pl.List(APP),
    "actions": pl.List(ACTION),
    "phase": pl.String(),
}


def rows_of_frame(frame: pl.DataFrame) -> list[dict[str, Any]]:
    """The frame's lifecycles as connections.jsonl's dicts, keys in their
    order (the schema's columns only)."""
    out = []
    for r in frame.select(list(CONNECTION_SCHEMA)).iter_rows(named=True):
        d = r["dest"]
        r["dest"] = [d["addr"], d["port"]] if d is not None else None
        r["states"] = [{k: v for k, v in s.items() if k != "timewait" or v} for s in r["states"]]
        r["app"] = {a["event"]: a["n"] for a in r["app"] or ()}
        r["actions"] = [[a["ts_ns"], a["event"]] for a in r["actions"] or ()]
        out.append(r)
    return out
