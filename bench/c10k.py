"""C10k: the multiplexer beside a goroutine-per-connection Go client.

Both hold N connections to the lab's echo server (actors.server) on
loopback, each connection sending a line a second, and report connections
held, OS threads and RSS at the end. RSS growth per connection is the
difference between a run with N connections and one with none, over N.
"""

from __future__ import annotations

import json
import resource
import subprocess
from pathlib import Path
from typing import Any

from bench.common import PY, BenchError
from bench.pairs import Row
from bench.procs import py_server


def raise_nofile(n: int) -> None:
    """Children inherit the limit: 10k connections need 10k descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))


def mux_run(port: int, n: int, seconds: float) -> dict[str, int]:
    argv = [PY, "-m", "actors.multiplexer", "--target", f"127.0.0.1:{port}"]
    out = subprocess.run(
        [*argv, "--connections", str(n), "--duration", str(seconds)],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    lines = [x for x in out.stderr.splitlines() if " progress " in x]
    if not lines:
        raise BenchError(f"the multiplexer did not report: {out.stderr[-400:]}")
    fields = dict(p.split("=", 1) for p in lines[-1].split() if "=" in p)
    return {k: int(float(fields[k])) for k in ("held", "rss_kb", "threads")}


def go_run(exe: Path, port: int, n: int, seconds: float) -> dict[str, int]:
    out = subprocess.run(
        [str(exe), "-target", f"127.0.0.1:{port}", "-connections", str(n)]
        + ["-duration", f"{seconds}s"],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    try:
        figures: dict[str, int] = json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise BenchError(f"the Go client did not report: {out.stderr[-400:]}") from None
    return figures


def per_conn_kb(full: dict[str, int], base: dict[str, int]) -> float:
    return (full["rss_kb"] - base["rss_kb"]) / max(full["held"], 1)


def c10k(go_exe: Path | None, port: int, sizes: list[int], seconds: float) -> list[Row]:
    """Multiplexer at each size (the last is the C10k figure), Go at the last."""
    n = sizes[-1]
    raise_nofile(2 * n + 1000)
    go_note = ""
    with py_server(port):
        mux_base = mux_run(port, 0, seconds)
        mux = {size: mux_run(port, size, seconds) for size in sizes}
        go_base: dict[str, Any] | None = None
        go: dict[str, Any] | None = None
        if go_exe is not None:
            try:
                go_base = go_run(go_exe, port, 0, seconds)
                go = go_run(go_exe, port, n, seconds)
            except (BenchError, subprocess.SubprocessError) as e:
                go_note = f"; Go client failed: {e}"
        else:
            go_note = "; Go client not built"
    full = mux[n]
    go_kb = per_conn_kb(go, go_base) if go and go_base else None
    rows = [
        Row(
            "c10k_held",
            "C10k",
            f"multiplexer: connections held (of {n:,}) vs the Go client",
            float(full["held"]),
            "connections",
            float(go["held"]) if go else None,
            "Go client held",
            goal=f">= {n}",
            goal_on="value",
            note=go_note.lstrip("; "),
        ),
        Row(
            "c10k_rss",
            "C10k",
            f"multiplexer: RSS growth per connection at {n:,} vs the Go client "
            "(goroutine per connection)",
            per_conn_kb(full, mux_base),
            "KB/conn",
            go_kb,
            "Go client KB/conn",
            goal="<= 1.0",
            goal_on="value",
            note=(
                f"multiplexer RSS {mux_base['rss_kb']:,} -> {full['rss_kb']:,} KB"
                + (f"; Go {go_base['rss_kb']:,} -> {go['rss_kb']:,} KB" if go and go_base else "")
            ),
        ),
        Row(
            "c10k_threads",
            "C10k",
            f"multiplexer: OS threads holding {n:,} connections vs the Go client",
            float(full["threads"]),
            "threads",
            float(go["threads"]) if go else None,
            "Go client threads",
            goal="<= 2",
            goal_on="value",
            note="multiplexer alone (no bus); under the orchestrator ZeroMQ adds 2 threads",
        ),
    ]
    for i, size in enumerate(sizes):
        m = mux[size]
        rows.append(
            Row(
                f"mux_scale_{i + 1}",
                "Scaling",
                f"multiplexer, {size:,} connections: RSS growth per connection",
                per_conn_kb(m, mux_base),
                "KB/conn",
                per_conn_kb(mux[sizes[0]], mux_base),
                f"at {sizes[0]:,}",
                goal="<= 1.0",
                goal_on="value",
                note=f"held {m['held']:,}, threads {m['threads']}, RSS {m['rss_kb']:,} KB",
            )
        )
    return rows
