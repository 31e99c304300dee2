"""Multiplexer RSS growth per connection and threads, 0 vs N connections.

Run: .venv/bin/python bench/actor_multiplexer.py [--connections 10000]
Starts the echo server, runs the multiplexer alone (no bus) with 0 and then
N connections, and compares their last progress reports.
Goals: <= 2 threads, <= 1 KB RSS growth per connection.
"""

from __future__ import annotations

import argparse
import subprocess
import sys


def last_progress(port: int, n: int) -> dict[str, int]:
    argv = [sys.executable, "-m", "actors.multiplexer", "--target", f"127.0.0.1:{port}"]
    out = subprocess.run(
        [*argv, "--connections", str(n), "--duration", "5"], capture_output=True, text=True
    )
    line = [x for x in out.stderr.splitlines() if " progress " in x][-1]
    fields = dict(p.split("=", 1) for p in line.split() if "=" in p)
    return {k: int(float(fields[k])) for k in ("held", "rss_kb", "threads")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--connections", type=int, default=10000)
    p.add_argument("--port", type=int, default=18998)
    args = p.parse_args()
    server = subprocess.Popen(
        [sys.executable, "-m", "actors.server", "--port", str(args.port), "--quiet"]
    )
    try:
        base = last_progress(args.port, 0)  # also lets the server come up
        full = last_progress(args.port, args.connections)
    finally:
        server.terminate()
        server.wait()
    per_conn = (full["rss_kb"] - base["rss_kb"]) / max(full["held"], 1)
    print(f"held {full['held']}  threads {full['threads']}  (goal <= 2)")
    print(
        f"RSS {base['rss_kb']} KB -> {full['rss_kb']} KB: {per_conn:.2f} KB/connection (goal <= 1)"
    )
    print(f"ratio to goal: RSS {per_conn / 1.0:.2f}, threads {full['threads'] / 2:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
