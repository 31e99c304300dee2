"""connections.jsonl from the lifecycles' frame: each line what the standard
library's json writes for the row's dict, including the rows where polars'
own text would differ (non-ASCII, control characters, exponent floats,
quotes), and connections.parquet's flattened columns."""

from __future__ import annotations

import copy
import json
from typing import Any

import orjson
import polars as pl

from correlator.connection_schema import CONNECTION_SCHEMA, rows_of_frame
from reports.connection_lines import connection_lines
from reports.tables import connections_frame

_json = json.JSONEncoder(separators=(",", ":")).encode

# A lifecycle as the engine writes it (a real bomb run's first line).
BASE: dict[str, Any] = {
    "id": 18,
    "kind": "connection",
    "role": "active",
    "outcome": "time_wait",
    "laddr": "127.0.0.1",
    "lport": 41552,
    "raddr": "127.0.0.1",
    "rport": 8080,
    "dest": ["127.0.0.1", 8080],
    "family": 2,
    "skaddr": 18446612692369829632,
    "start_ns": 292724424449,
    "end_ns": 292724865654,
    "t_start": 2.942604033,
    "duration_ns": 441205,
    "closed_in_run": True,
    "timewait_from": "FIN_WAIT2",
    "first_old": "CLOSE",
    "last_state": "CLOSE",
    "owner": {"actor": "bomber", "pid": 12058, "fd": 12, "via": "app:connect"},
    "first_cpu_pid": 12058,
    "states": [
        {"state": "SYN_SENT", "start_ns": 292724424449, "dur_ns": 40400, "cpu_pid": 12058},
        {
            "state": "FIN_WAIT2",
            "start_ns": 292724865654,
            "dur_ns": 4407,
            "cpu_pid": None,
            "timewait": True,
        },
    ],
    "transitions_dropped": 0,
    "accepted": False,
    "app_closed": True,
    "error": None,
    "app": {"connect": 1, "close": 1},
    "actions": [[292724665837, "connect"], [292724689733, "close"]],
    "phase": "bomb",
}


_RESHAPED = ("dest", "app", "actions")
_PLAIN = {k: t for k, t in CONNECTION_SCHEMA.items() if k not in _RESHAPED}


def frame_of_rows(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """Rows written by hand as the engine's frame (correlator/connection_schema.py)."""
    plain = pl.from_dicts(rows, schema=_PLAIN)
    shaped = pl.from_dicts(
        [
            {
                "dest": {"addr": d[0], "port": d[1]} if (d := r["dest"]) else None,
                "app": [{"event": e, "n": n} for e, n in r["app"].items()],
                "actions": [{"ts_ns": a[0], "event": a[1]} for a in r["actions"]],
            }
            for r in rows
        ],
        schema={k: CONNECTION_SCHEMA[k] for k in _RESHAPED},
    )
    return pl.concat([plain, shaped], how="horizontal").select(list(CONNECTION_SCHEMA))


def _row(**changes: Any) -> dict[str, Any]:
    row = copy.deepcopy(BASE)
    row.update(changes)
    return row


ROWS = [
    BASE,
    # A listener: no peer, no owner, no dest, nothing done by the app.
    _row(
        kind="listener",
        role="listener",
        raddr=None,
        rport=None,
        dest=None,
        owner=None,
        states=[],
        app={},
        actions=[],
        t_start=None,
        end_ns=None,
        phase=None,
    ),
    # A connect that never got a port.
    _row(
        lport=None,
        laddr=None,
        outcome="failed",
        error="EADDRNOTAVAIL e-1",
        owner={"actor": None, "pid": 7, "fd": None, "via": "cpu"},
    ),
    # Text json escapes and polars would not, or differently.
    _row(app={"connexión": 2, 'say "hi"\\': 1, "bell\x07": 3}, phase="fase ñ"),
    _row(actions=[[1, "tab\there"], [2, "del\x7f"]], error="a/b"),
    # Floats json writes with an exponent, and the edges around them.
    _row(t_start=5e-05),
    _row(t_start=0.0001),
    _row(t_start=0.0),
    _row(t_start=123456.5),
    _row(t_start=1e16),
    _row(skaddr=2**64 - 1, first_cpu_pid=None, accepted=None),
]


def test_lines_are_what_json_writes() -> None:
    text = connection_lines(frame_of_rows(ROWS)).decode()
    assert text.splitlines() == [_json(r) for r in ROWS] and text.endswith("\n")
    # The common case, every row plain, takes the whole-text path.
    assert connection_lines(frame_of_rows(ROWS[:3])).decode().splitlines() == [
        _json(r) for r in ROWS[:3]
    ]


def test_rows_come_back_from_the_frame_unchanged() -> None:
    back = rows_of_frame(frame_of_rows(ROWS))
    # Key order counts: connections.jsonl keeps the engine's.
    assert [list(r.items()) for r in back] == [list(r.items()) for r in ROWS]


def test_two_host_keys_only_where_the_row_has_them() -> None:
    """host and peer_host on connections (not listeners), tcp_info where a
    snapshot saw the handshake (reports/snapshots.py's LinkSink)."""
    info = {"advmss": 1448, "options": ["sack", "wscale"], "congestion": "cubic"}
    rows = [ROWS[0], ROWS[1], ROWS[2]]
    frame = frame_of_rows(rows).with_columns(
        pl.Series("host", ["a", None, None], dtype=pl.String),
        pl.Series("peer_host", ["b", None, "a"], dtype=pl.String),
        pl.Series("tcp_info", [orjson.dumps(info).decode(), None, None], dtype=pl.String),
    )
    want = [
        {**rows[0], "host": "a", "peer_host": "b", "tcp_info": info},
        rows[1],
        {**rows[2], "host": None, "peer_host": "a"},
    ]
    assert connection_lines(frame).decode().splitlines() == [_json(r) for r in want]


def test_parquet_columns_flatten_the_nested_ones() -> None:
    flat = connections_frame(frame_of_rows(ROWS[:2]))
    first, listener = flat.to_dicts()
    assert (first["dest_addr"], first["dest_port"]) == ("127.0.0.1", 8080)
    assert (first["owner_actor"], first["owner_pid"], first["owner_via"]) == (
        "bomber",
        12058,
        "app:connect",
    )
    assert [s["timewait"] for s in first["states"]] == [False, True]
    assert json.loads(first["app"]) == {"connect": 1, "close": 1}
    assert first["actions"][1] == {"ts_ns": 292724689733, "event": "close"}
    assert first["host"] is None and first["internals_retransmits"] is None
    assert (listener["dest_addr"], listener["owner_pid"], listener["app"]) == (None, None, "{}")
