"""Bomber connections/s vs a minimal C connect()/close() loop, side by side.

Run: .venv/bin/python bench/actor_bomber.py [--count 20000] [--rounds 5]
Both clients hit the same C accept()/close() server on loopback, one after
the other, alternating, ROUNDS times; medians are compared. The bomber runs
under a real Hub (its connect/close records go over ZeroMQ) and alone.
Goal: bomber >= 0.95 x the C loop.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bus.endpoints import ipc_endpoints, make_run_dir
from bus.hub import Hub
from bus.schema import Kind

HERE = Path(__file__).resolve().parent


def build(out_dir: Path) -> Path:
    if shutil.which("gcc") is None:
        raise SystemExit("bench: gcc is missing: run scripts/provision.sh (build-essential)")
    exe = out_dir / "connect_loop"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(HERE / "connect_loop.c")], check=True)
    return exe


def c_loop(exe: Path, port: int, count: int) -> float:
    out = subprocess.run(
        [str(exe), "client", str(port), str(count)], capture_output=True, text=True
    )
    return float(out.stdout.split()[0])


def bomber_attached(port: int, count: int) -> float:
    ep = ipc_endpoints(make_run_dir())
    hub = Hub(ep.events, ep.control)
    argv = [sys.executable, "-m", "actors.bomber", "--quiet", *ep.as_args()]
    proc = subprocess.Popen([*argv, "--target", f"127.0.0.1:{port}", "--count", str(count)])
    try:
        hub.wait_ready(["bomber"], 30)
        hub.command("bomber", "start")
        records = 0
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            for _, env in hub.poll(100):
                if env.kind is Kind.LOG:
                    records += len(env.body["records"])
                if env.kind is Kind.STATS and env.body.get("attempts") == count:
                    hub.command("bomber", "stop")
                    proc.wait(timeout=30)
                    assert records >= 2 * count * 0.99, f"only {records} records arrived"
                    return float(env.body["per_s"])
        raise SystemExit("bench: the bomber did not finish in 300 s")
    finally:
        if proc.poll() is None:
            proc.kill()
        hub.close()


def bomber_alone(port: int, count: int) -> float:
    argv = [sys.executable, "-m", "actors.bomber", "--target", f"127.0.0.1:{port}"]
    out = subprocess.run([*argv, "--count", str(count)], capture_output=True, text=True)
    done = next(line for line in out.stderr.splitlines() if " done " in line)
    return float(done.split("per_s=")[1].split()[0])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--count", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--port", type=int, default=18999)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(Path(tmp))
        server = subprocess.Popen([str(exe), "server", str(args.port)], stdout=subprocess.PIPE)
        try:
            assert server.stdout is not None and server.stdout.readline() == b"listening\n"
            runs: dict[str, list[float]] = {"C loop": [], "bomber on bus": [], "bomber alone": []}
            for _ in range(args.rounds):
                runs["C loop"].append(c_loop(exe, args.port, args.count))
                runs["bomber on bus"].append(bomber_attached(args.port, args.count))
                runs["bomber alone"].append(bomber_alone(args.port, args.count))
        finally:
            server.kill()
            server.wait()
    med = {k: statistics.median(v) for k, v in runs.items()}
    for k, v in runs.items():
        print(f"{k:>14}: median {med[k]:8.0f} conn/s  runs {[round(x) for x in v]}")
    for k in ("bomber on bus", "bomber alone"):
        print(f"{k} / C loop = {med[k] / med['C loop']:.3f}  (goal >= 0.95)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
