"""trace.json's connection tracks as TraceWriter writes them from a chunk's
lifecycles frame: byte for byte what json writes for each trace event, built
here the plain way (a dict per event) from the same lifecycles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from correlator.connection_schema import CONNECTION_SCHEMA
from reports.writers import TraceWriter

T0 = 5_000_000_000


def _life(id_: int, kind: str, outcome: str | None, **kw: Any) -> dict[str, Any]:
    row: dict[str, Any] = {k: None for k in CONNECTION_SCHEMA}
    row.update(id=id_, kind=kind, outcome=outcome, states=[], app=[], actions=[])
    row.update(kw)
    return row


def _state(state: str, start: int, dur: int, cpu: int | None, tw: bool | None = None) -> dict:
    return {"state": state, "start_ns": start, "dur_ns": dur, "cpu_pid": cpu, "timewait": tw}


OWNER = {"actor": "server", "pid": 100, "fd": 4, "via": "accept4"}
LIVES = [
    _life(1, "listener", "listening", laddr="127.0.0.1", lport=8080, owner=OWNER,
          states=[_state("LISTEN", T0 + 1_000, 2_500_000, 100)]),
    _life(2, "connection", "closed", laddr="::1", lport=40000, raddr="::1", rport=8080,
          owner={"actor": "client", "pid": 200, "fd": None, "via": "guess"},
          states=[_state("SYN_SENT", T0 + 123_456_789, 10, 200),
                  _state("FIN_WAIT2", T0 + 200_000_000, 0, None, True),
                  _state("TIME_WAIT", T0 - 1_500, 7, 0, False)]),
    # No port yet: the connect's destination, or ? when none is known.
    _life(3, "connection", "refused", lport=0, dest={"addr": "198.18.0.2", "port": 9},
          states=[_state("SYN_SENT", T0 + 10**15 + 7, 12_345_678_901, 300)]),
    _life(4, "connection", None, states=[_state("CLOSE", T0, 1_000, 1)]),
    # Strings json escapes: a quote, non-ASCII.
    _life(5, "connection", 'odd "one"', laddr="127.0.0.1", lport=1, raddr="127.0.0.2",
          rport=2, owner={"actor": "sérveur", "pid": 7, "fd": 1, "via": "app"},
          states=[_state("ESTABLISHED", T0 + 999, 1_000_001, 7)]),
]  # fmt: skip


def _us(ns: int) -> float:
    return round(ns / 1000, 3)


def _expected(lives: list[dict[str, Any]]) -> list[dict[str, Any]]:
    evs: list[dict[str, Any]] = []
    for c in lives:
        owner = c["owner"] or {}
        pid = owner.get("pid") or 0
        if c["kind"] == "listener":
            label = f"#{c['id']} listen {c['laddr']}:{c['lport']}"
        elif c["lport"]:
            label = f"#{c['id']} {c['laddr']}:{c['lport']} -> {c['raddr']}:{c['rport']}"
        else:
            d = c["dest"] or {"addr": "?", "port": "?"}
            label = f"#{c['id']} (no port) -> {d['addr']}:{d['port']}"
        name = f"{label} [{c['outcome']}]"
        evs.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": c["id"],
                    "args": {"name": name}})  # fmt: skip
        for s in c["states"]:
            evs.append(
                {"ph": "X", "cat": "tcp", "pid": pid, "tid": c["id"],
                 "name": s["state"] + (" (timewait socket)" if s["timewait"] else ""),
                 "ts": _us(s["start_ns"] - T0), "dur": _us(s["dur_ns"]),
                 "args": {"cpu_pid": s["cpu_pid"], "outcome": c["outcome"]}}
            )  # fmt: skip
    return evs


def test_tracks_are_json_events_in_connection_order(tmp_path: Path) -> None:
    frame = pl.DataFrame(LIVES, schema=CONNECTION_SCHEMA)
    tw = TraceWriter(tmp_path / "trace.json", T0)
    tw.lifecycles(frame.head(2))
    tw.lifecycles(frame.tail(3))
    tw.close()
    text = (tmp_path / "trace.json").read_text()
    head, body = text.split("\n", 1)
    assert head == '{"displayTimeUnit":"ms","traceEvents":['
    lines = body.removesuffix("\n]}\n").split(",\n")
    expected = _expected(LIVES)
    procs = [(100, "server 100"), (200, "client 200"), (0, "unowned sockets"), (7, "sérveur 7")]
    expected += [
        {"ph": "M", "name": "process_name", "pid": p, "args": {"name": n}} for p, n in procs
    ]
    assert [json.dumps(e, separators=(",", ":")) for e in expected] == lines
    assert '"ts":1.0,"dur":2500.0' in lines[1]
    assert '"ts":-1.5,"dur":0.007' in lines[5]
