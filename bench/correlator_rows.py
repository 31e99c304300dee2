"""The correlator's rows: issue 11's goals for correlating a recording.

    python -m bench.correlator_rows replay RUN_DIR MODE EVERY   (child: read | correlate)
    python -m bench.correlator_rows generate KIND N [dict]      (child: held | stream recording)

Each replay runs in a child of its own, so that its time and peak RSS are
its own. The child reports wall time and CPU time (user + system of all its
threads: polars has some), both counted after its imports. The goals are
judged on CPU time: the machine is shared, and wall time says as much about
the neighbours (and, for the 10M replay, about the other sections running
beside it at nice 19) as about the correlator; wall time is in the notes.

The synthetic recordings come from tests/synthetic.py through
bench/correlator_replay.py, their tcp_state, accept and epoll batches as raw
ring records (KERNEL_RAW), as real runs record them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import OUT, PY, BenchError, log
from bench.correlator_replay import STREAM_ITEMS_PER_CONNECTION
from bench.pairs import Row, median

SECTION = "Pipeline capacity"
PROGRESS_EVERY = 1_000_000  # replay children report RSS every this many events
NICE = ["nice", "-n", "19"]

# Issue 11's goals for the correlator (the rows' `goal`, judged on CPU time).
RATE_GOAL = 1_000_000  # events/s on the 100k-event replay
VS_READ_GOAL = ">= 0.5"  # correlating ÷ only reading the same recording, events/s
HELD_KB_GOAL = 1.0  # KB of RSS growth per held connection, with 100k held
BIG_S_GOAL = 15  # seconds to correlate the 10M-event recording
BIG_RSS_MB_GOAL = 1024  # peak RSS of that replay: 1 GB
FLAT_GOAL = "<= 1.10"  # RSS growth at the end ÷ after the first 1M events: memory stays flat


def rss_mb() -> float:
    """Peak RSS of this process image. Not ru_maxrss: Linux carries that over
    exec from the pre-exec image, i.e. the bench runner's own size."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def replay_child(run_dir: Path, mode: str, every: int = PROGRESS_EVERY) -> None:
    """Replay a recording (read only, or correlate into a sink that discards);
    print a JSON line every `every` correlated events and one at the end."""
    from bench.correlator_replay import NullSink, read_items
    from correlator.correlate import Correlator
    from correlator.recording import RecordingReader, read_run_meta

    base = rss_mb()
    start = time.perf_counter()
    cpu0 = time.process_time()
    items = 0
    next_report = every

    def report(done: bool) -> None:
        line = {
            "items": items,
            "seconds": round(time.perf_counter() - start, 3),
            "cpu_s": round(time.process_time() - cpu0, 3),
            "rss_base_mb": round(base, 1),
            "rss_peak_mb": round(rss_mb(), 1),
            "done": done,
        }
        print(json.dumps(line), flush=True)

    if mode == "read":
        items = read_items(run_dir / "recording.msgpack")
    else:
        sink = NullSink()
        corr = Correlator(sink, read_run_meta(run_dir))
        for env in RecordingReader(run_dir / "recording.msgpack"):
            corr.feed(env)
            if sink.events >= next_report:
                items = sink.events
                next_report += every
                report(False)
        corr.finish()
        items = sink.events
    report(True)


def replay(
    run_dir: Path, mode: str, limit_s: float, every: int = PROGRESS_EVERY, nice: bool = False
) -> list[dict[str, Any]]:
    """Run a replay child; its JSON lines (the last has done=True unless it
    ran out of time and was stopped)."""
    proc = subprocess.Popen(
        [*(NICE if nice else []), PY, "-m", "bench.correlator_rows", "replay", str(run_dir), mode]
        + [str(every)],
        stdout=subprocess.PIPE,
        text=True,
    )
    lines: list[dict[str, Any]] = []
    timer = threading.Timer(limit_s, proc.kill)
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(json.loads(line))
    finally:
        timer.cancel()
        proc.wait()
    if not lines:
        raise BenchError(f"replay of {run_dir} printed nothing (exit {proc.returncode})")
    return lines


def generate(kind: str, n: int, raw: bool = True) -> Path:
    from bench.correlator_replay import gen_held, gen_stream, to_raw

    run_dir = OUT / "correlator" / f"{kind}-{n}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    (gen_held if kind == "held" else gen_stream)(run_dir, n)
    if raw:
        to_raw(run_dir)
    return run_dir


def per_s(items: float, seconds: float) -> float:
    return items / max(seconds, 1e-9)


def correlator_throughput(events: int, rounds: int) -> list[Row]:
    """Correlating a recording vs only reading it (decode), same file, in
    alternated pairs; events/s on CPU time (judged) and on wall time."""
    run_dir = generate("stream", events)
    cpu: dict[str, list[float]] = {"correlate": [], "read": []}
    wall: dict[str, list[float]] = {"correlate": [], "read": []}
    growth: list[float] = []
    try:
        for r in range(rounds):
            for mode in ("correlate", "read") if r % 2 == 0 else ("read", "correlate"):
                last = replay(run_dir, mode, 300)[-1]
                cpu[mode].append(per_s(last["items"], last["cpu_s"]))
                wall[mode].append(per_s(last["items"], last["seconds"]))
                if mode == "correlate":
                    growth.append(last["rss_peak_mb"] - last["rss_base_mb"])
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    rate = median(cpu["correlate"])
    us_per_conn = STREAM_ITEMS_PER_CONNECTION * 1e6 / rate
    allowed = STREAM_ITEMS_PER_CONNECTION * 1e6 / RATE_GOAL
    read_us = STREAM_ITEMS_PER_CONNECTION * 1e6 / median(cpu["read"])
    wall_note = (
        f"wall time (not judged): correlate {median(wall['correlate']):,.0f} events/s, "
        f"read {median(wall['read']):,.0f}/s"
    )
    return [
        Row(
            "correlator_rate",
            SECTION,
            f"correlator replaying a {events:,}-event synthetic recording (raw ring records), "
            "events per CPU second (user + system after imports; judged on CPU)",
            rate,
            "events/s",
            RATE_GOAL,
            "the goal",
            goal=f">= {RATE_GOAL}",
            goal_on="value",
            note=(
                f"{us_per_conn:.0f} µs CPU per connection ({STREAM_ITEMS_PER_CONNECTION} items), "
                f"the goal allows {allowed:.0f}; {wall_note}; RSS growth "
                f"{median(growth):.0f} MB"
            ),
            runs={"correlate": cpu["correlate"]},  # one arm: the peer is the goal
        ),
        Row(
            "correlator_replay",
            SECTION,
            f"correlator replaying the {events:,}-event recording vs reading it only "
            "(envelopes decoded, raw records as their numpy view), events per CPU second",
            rate,
            "events/s",
            median(cpu["read"]),
            "read + decode only",
            goal=VS_READ_GOAL,
            note=(
                f"per connection: correlating {us_per_conn:.0f} µs CPU, reading {read_us:.0f}; "
                f"{wall_note}"
            ),
            runs={"correlate": cpu["correlate"], "read": cpu["read"]},
        ),
    ]


def correlator_scaling(sizes: list[int]) -> list[Row]:
    """Held connections (all open at once): the correlator's cost per size,
    and the goal's row (KB per held connection) at the largest."""
    rows: list[Row] = []
    first: float | None = None
    kb = 0.0
    for i, n in enumerate(sizes):
        run_dir = generate("held", n)
        try:
            last = replay(run_dir, "correlate", 300)[-1]
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
        rate = per_s(last["items"], last["cpu_s"])
        growth = last["rss_peak_mb"] - last["rss_base_mb"]
        kb = growth * 1024 / n
        first = first or rate
        rows.append(
            Row(
                f"correlator_scale_{i + 1}",
                "Scaling",
                f"correlator, {n:,} connections held open at once: replay events per CPU second",
                rate,
                "events/s",
                first,
                f"{sizes[0]:,} connections",
                note=(
                    f"{last['items']:,} events in {last['cpu_s']:.1f} s CPU, "
                    f"{last['seconds']:.1f} s wall; RSS growth {growth:.0f} MB = "
                    f"{kb:.2f} KB per held connection"
                ),
            )
        )
    n = sizes[-1]
    rows.append(
        Row(
            "correlator_held_kb",
            SECTION,
            f"correlator with {n:,} connections held open at once: RSS growth per held connection",
            kb,
            "KB/held conn",
            HELD_KB_GOAL,
            "the goal",
            goal=f"<= {HELD_KB_GOAL}",
            goal_on="value",
            note=f"the goal is set at 100,000 held; {rows[-1].note}",
        )
    )
    return rows


class BigReplay:
    """The 10M-event recording: generated and replayed in the background
    (it takes minutes), stopped at a deadline if it has not finished. It runs
    at nice 19, so that it takes only CPU the ratio measurements leave idle:
    its time is judged on CPU, which a slower wall clock does not change."""

    def __init__(self, events: int, deadline: float, raw: bool) -> None:
        self.events = events
        self.raw = raw
        self.every = max(1, min(PROGRESS_EVERY, events // 10))
        self.deadline = deadline
        self.lines: list[dict[str, Any]] = []
        self.error = ""
        self.gen_s = 0.0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        run_dir = OUT / "correlator" / f"stream-{self.events}"
        shape = [] if self.raw else ["dict"]
        try:
            t = time.monotonic()
            subprocess.run(
                [*NICE, PY, "-m", "bench.correlator_rows", "generate", "stream", str(self.events)]
                + shape,
                check=True,
                timeout=max(1.0, self.deadline - time.monotonic()),
            )
            self.gen_s = time.monotonic() - t
            log(f"{self.events:,}-event recording written in {self.gen_s:.0f} s; replaying")
            left = max(1.0, self.deadline - time.monotonic())
            self.lines = replay(run_dir, "correlate", left, self.every, nice=True)
        except Exception as e:  # reported in the rows, never lost
            self.error = f"{type(e).__name__}: {e}"
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)

    def rows(self) -> list[Row]:
        self.thread.join(timeout=max(0.0, self.deadline - time.monotonic()) + 30)
        what = f"a {self.events:,}-event recording"
        shape = "raw ring records" if self.raw else "tcp_state batches as dicts"
        if not self.lines:
            why = f"not measured: {self.error or 'no progress reported'}"
            return [
                Row(k, SECTION, m, None, u, goal=g, goal_on=on, note=why)
                for k, m, u, g, on in (
                    ("correlator_10m_time", f"CPU time correlating {what}", "s CPU",
                     f"< {BIG_S_GOAL}", "value"),
                    ("correlator_10m_rss", f"peak RSS correlating {what}", "MB",
                     f"< {BIG_RSS_MB_GOAL}", "value"),
                    ("correlator_peak_rss", f"RSS growth correlating {what}", "MB growth",
                     FLAT_GOAL, "ratio"),
                )
            ]  # fmt: skip
        last = self.lines[-1]
        first = next((x for x in self.lines if x["items"] >= self.every), self.lines[0])
        base = last["rss_base_mb"]
        done = bool(last["done"])
        run = (
            f"{last['items']:,} events in {last['cpu_s']:.0f} s CPU "
            f"({per_s(last['items'], last['cpu_s']):,.0f} events per CPU second), "
            f"{last['seconds']:.0f} s wall at nice 19 beside the other sections (not judged); "
            f"recording ({shape}) written in {self.gen_s:.0f} s"
        )
        if not done:
            run = f"NOT FINISHED in the time budget, stopped at {last['items']:,} events; " + run
        return [
            Row(
                "correlator_10m_time",
                SECTION,
                f"CPU time correlating {what} (user + system after imports; judged on CPU)",
                last["cpu_s"],
                "s CPU",
                BIG_S_GOAL,
                "the goal",
                goal=f"< {BIG_S_GOAL}",
                goal_on="value",
                note=run,
                incomplete=not done,
            ),
            Row(
                "correlator_10m_rss",
                SECTION,
                f"peak RSS correlating {what} (the whole process, imports included)",
                last["rss_peak_mb"],
                "MB",
                BIG_RSS_MB_GOAL,
                "1 GB",
                goal=f"< {BIG_RSS_MB_GOAL}",
                goal_on="value",
                note=f"base after imports {base:.0f} MB" + ("" if done else "; " + run),
                incomplete=not done,
            ),
            Row(
                "correlator_peak_rss",
                SECTION,
                f"RSS growth correlating {what}: at the end vs after the first "
                f"{self.every:,} events (memory stays flat)",
                last["rss_peak_mb"] - base,
                "MB growth",
                first["rss_peak_mb"] - base,
                f"growth at {self.every:,}",
                goal=FLAT_GOAL,
                incomplete=not done,
            ),
        ]


def main(argv: list[str]) -> None:
    cmd = argv[0]
    if cmd == "replay":
        replay_child(Path(argv[1]), argv[2], int(argv[3]))
    elif cmd == "generate":
        generate(argv[1], int(argv[2]), raw=argv[3:4] != ["dict"])
    else:
        raise SystemExit(f"bench.correlator_rows: unknown command {cmd!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
