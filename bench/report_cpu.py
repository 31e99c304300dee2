"""CPU time (user + sys) of `tcplab report` on a port bomb's recording, this
checkout against another one, alternated (figures printed, nothing asserted).

    .venv/bin/python bench/report_cpu.py --against /path/to/other/checkout
    .venv/bin/python bench/report_cpu.py --against ../main --connections 100000 --pairs 3

The recording is bench/correlator_replay.py's bomb shape (connect/close
pairs, failed connects, epoll wake-ups, observer samples), written once,
its kernel batches as raw ring records as real runs record them.
Each pair runs both checkouts' `tcplab report` in fresh processes, in
alternating order (ABBA...); the CPU time is the child's rusage. The ratio
is this ÷ other per pair, with its spread; the imports' CPU (same code path
in both, measured once each) is printed beside so it can be taken out.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.correlator_replay import gen_bomb, to_raw  # noqa: E402

REPORT = "import sys, orchestrator; sys.exit(orchestrator.main(sys.argv[1:]))"
IMPORTS = "import orchestrator, reports.build"
# A checkout's report once more, with the CPU time its sink spends on the
# finished connections (connections.jsonl, the trace, connections.parquet):
# RunSink.connection (a dict each) or RunSink.connections (a frame per
# chunk), and RunSink.close (the Parquet files).
SPLIT = """
import sys, time
from pathlib import Path
import reports.writers as rw
from reports.build import build_reports
spent = [0.0]
def timed(f):
    def g(*a):
        t = time.process_time()
        try:
            return f(*a)
        finally:
            spent[0] += time.process_time() - t
    return g
for name in ("connection", "connections", "close"):
    if name in vars(rw.RunSink):
        setattr(rw.RunSink, name, timed(getattr(rw.RunSink, name)))
build_reports(Path(sys.argv[1]))
print(f"{spent[0]:.2f} s", file=sys.stderr)
"""
EVENTS_PER_CONNECTION = 17  # gen_bomb's shape


def cpu_seconds(checkout: Path, code: str, *args: str, show: bool = False) -> float:
    """user + sys of one fresh process running `code` from `checkout`."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=checkout,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if status != 0:
        raise SystemExit(f"{checkout}: {code} {' '.join(args)} failed:\n{err}")
    if show:
        print(err.strip().splitlines()[-1])
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--against", required=True, type=Path, help="the other checkout")
    ap.add_argument("--connections", type=int, default=100_000)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "report_cpu")
    args = ap.parse_args()
    other = args.against.resolve()
    if not (other / "reports" / "build.py").is_file():
        raise SystemExit(f"{other} is not a tcplab checkout: give --against a checkout's root")
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    try:
        n = gen_bomb(args.out, args.connections * EVENTS_PER_CONNECTION)
        to_raw(args.out)
        print(f"recording: {n} bomb connections ({args.out})")
        arms = {"this": ROOT, "other": other}
        imports = {k: cpu_seconds(c, IMPORTS) for k, c in arms.items()}
        times: dict[str, list[float]] = {"this": [], "other": []}
        for i in range(args.pairs):
            order = ("this", "other") if i % 2 == 0 else ("other", "this")
            for k in order:
                times[k].append(cpu_seconds(arms[k], REPORT, "report", str(args.out)))
            print(f"pair {i + 1}: this {times['this'][-1]:.2f} s, other {times['other'][-1]:.2f} s")
        ratios = [a / b for a, b in zip(times["this"], times["other"], strict=True)]
        for k, c in arms.items():
            print(
                f"{k:5} ({c}): report CPU median {statistics.median(times[k]):.2f} s "
                f"(min {min(times[k]):.2f}, max {max(times[k]):.2f}), imports {imports[k]:.2f} s"
            )
        print(
            f"this ÷ other: median {statistics.median(ratios):.3f} "
            f"(min {min(ratios):.3f}, max {max(ratios):.3f}, {len(ratios)} pairs)"
        )
        for k, c in arms.items():
            print(f"{k:5} sink on the connections (+ Parquet at close), CPU:", end=" ")
            cpu_seconds(c, SPLIT, str(args.out), show=True)
    finally:
        shutil.rmtree(args.out, ignore_errors=True)


if __name__ == "__main__":
    main()
