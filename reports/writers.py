"""Streaming writers for the run directory: JSON Lines and the trace file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

# Perfetto stays usable up to a few tens of thousands of tracks; beyond that
# the trace keeps the first ones and the summary says how many were left out.
MAX_TRACE_CONNECTIONS = 20_000


# One encoder reused: json.dumps would build it again for every line.
_dumps = json.JSONEncoder(separators=(",", ":"), default=str, check_circular=False).encode


class TraceWriter:
    """Chrome/Perfetto trace-event JSON, written as connections finish.

    One track (tid) per connection inside its owner's process (pid), each
    state a complete ("X") slice; counters ("C") for the state totals.
    """

    def __init__(self, path: Path, t0_ns: int, max_connections: int = MAX_TRACE_CONNECTIONS):
        self.f: IO[str] = open(path, "w")
        self.f.write('{"displayTimeUnit":"ms","traceEvents":[\n')
        self.t0 = t0_ns
        self.first = True
        self.max_connections = max_connections
        self.connections = 0
        self.left_out = 0
        self.pids: dict[int, str] = {}

    def _us(self, ns: int) -> float:
        return round((ns - self.t0) / 1000, 3)

    def _put(self, ev: dict[str, Any]) -> None:
        self.f.write(("" if self.first else ",\n") + _dumps(ev))
        self.first = False

    def connection(self, row: dict[str, Any]) -> None:
        if self.connections >= self.max_connections:
            self.left_out += 1
            return
        self.connections += 1
        owner = row.get("owner") or {}
        pid: int = owner["pid"] if isinstance(owner.get("pid"), int) else 0
        if pid not in self.pids:
            self.pids[pid] = f"{owner.get('actor') or 'pid'} {pid}" if pid else "unowned sockets"
        tid = row["id"]
        if row["kind"] == "listener":
            label = f"#{tid} listen {row['laddr']}:{row['lport']}"
        elif row.get("lport"):
            label = f"#{tid} {row['laddr']}:{row['lport']} -> {row['raddr']}:{row['rport']}"
        else:
            dest = row.get("dest") or ["?", "?"]
            label = f"#{tid} (no port) -> {dest[0]}:{dest[1]}"
        self._put(
            {
                "ph": "M",
                "name": "thread_name",
                "pid": pid,
                "tid": tid,
                "args": {"name": f"{label} [{row['outcome']}]"},
            }
        )
        for st in row["states"]:
            self._put(
                {
                    "ph": "X",
                    "cat": "tcp",
                    "pid": pid,
                    "tid": tid,
                    "name": st["state"] + (" (timewait socket)" if st.get("timewait") else ""),
                    "ts": self._us(st["start_ns"]),
                    "dur": round(st["dur_ns"] / 1000, 3),
                    "args": {"cpu_pid": st["cpu_pid"], "outcome": row["outcome"]},
                }
            )

    def counters(self, name: str, points: list[list[Any]], pid: int = 0) -> None:
        for t, values in points:
            self._put(
                {"ph": "C", "name": name, "pid": pid, "ts": round(t * 1e6, 3), "args": values}
            )

    def close(self, t0_matches_series: bool = True) -> None:
        for pid, name in self.pids.items():
            self._put({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": name}})
        self.f.write("\n]}\n")
        self.f.close()


class RunSink:
    """The correlator's sink: events.jsonl, connections.jsonl and the trace."""

    def __init__(self, run_dir: Path, trace: TraceWriter) -> None:
        self.events: IO[str] = open(run_dir / "events.jsonl", "w", buffering=1 << 20)
        self.conns: IO[str] = open(run_dir / "connections.jsonl", "w", buffering=1 << 20)
        self.trace = trace
        self.n_events = 0
        self.n_connections = 0

    def event(self, row: dict[str, Any]) -> None:
        self.events.write(_dumps(row) + "\n")
        self.n_events += 1

    def connection(self, row: dict[str, Any]) -> None:
        self.conns.write(_dumps(row) + "\n")
        self.n_connections += 1
        self.trace.connection(row)

    def close(self) -> None:
        self.events.close()
        self.conns.close()
