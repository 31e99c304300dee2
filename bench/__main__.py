"""`make bench`: every performance figure of tcplab, each against a peer.

    python -m bench            # the full table, under 10 minutes on 2 cores
    python -m bench --quick    # fewer repetitions and smaller sizes
    python -m bench --tiny     # a smoke run: every row, tiny sizes (tests)

Prints one table at the end and writes bench/out/latest.json and
bench/out/latest.md (paste the latter into docs/bench.md). Every value has
a peer measured in the same invocation, in pairs (who goes first
alternating); each ratio row shows the spread of its paired ratios and how
many pairs; a row whose pairs disagree by more than ±10% is measured again
(bounded) and marked noisy if they never agree. The bomber's sections run
with a SCHED_IDLE spinner on every CPU in both arms (bench/procs.py says why).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.builds import build_c, build_go
from bench.common import OUT, log, machine
from bench.goals import explain
from bench.pairs import SPREAD_LIMIT, Row, failed_row
from bench.procs import free_port, idle_spinners
from bench.table import markdown, text_table


@dataclass(frozen=True)
class Config:
    mode: str
    budget_s: float  # the background 10M replay is stopped at this point
    rate_count: int
    rate_rounds: int
    probe_rounds: int
    lab_count: int
    lab_rounds: int
    extra_pairs: int  # at most this many more pairs for a row whose spread is too wide
    retries: int  # sections whose rows come from elsewhere: measured again at most this often
    levels: list[tuple[int, int]]
    level_s: float
    bus_batches: int
    bus_rounds: int
    corr_events: int
    corr_rounds: int
    big_events: int
    big_raw: bool  # the 10M recording's kernel batches as raw ring records (else dicts)
    corr_sizes: list[int]
    mux_sizes: list[int]
    mux_s: float


# The 10M recording in the shape real runs record (raw ring records): its
# writing then takes longer (to_raw), see docs/bench.md for the budget.
BIG_RAW = True


def config(mode: str) -> Config:
    from bench.event_loss import LEVELS

    if mode == "tiny":
        return Config(
            "tiny", 300, 2000, 2, 1, 2000, 1, 1, 1, [(1, 2000), (1, 0)], 0.5, 50, 2, 5000, 2,
            100_000, True, [200, 1000], [50, 200], 2,
        )  # fmt: skip
    if mode == "quick":
        return Config(
            "quick", 420, 10000, 3, 2, 10000, 2, 2, 1, LEVELS, 1.5, 500, 2, 50_000, 2,
            10_000_000, BIG_RAW, [1000, 10_000, 100_000], [1000, 5000, 10_000], 4,
        )  # fmt: skip
    return Config(
        "full", 570, 20000, 5, 3, 20000, 3, 2, 1, LEVELS, 2.0, 1000, 3, 100_000, 3,
        10_000_000, BIG_RAW, [1000, 10_000, 100_000], [1000, 5000, 10_000], 5,
    )  # fmt: skip


class Runner:
    def __init__(self, cfg: Config, out: Path = OUT) -> None:
        self.cfg = cfg
        self.out = out
        self.rows: list[Row] = []
        self.details: dict[str, Any] = {}
        self.started = time.monotonic()

    def section(
        self,
        name: str,
        fn: Callable[[], list[Row]],
        fallback: list[tuple[str, str, str, str]],
        retries: int = 0,
    ) -> None:
        """Run one section; if it breaks, its rows still appear, marked.

        `retries`: for sections that do not pair their runs through
        bench.pairs.paired(): while one of their paired rows is noisy, the
        whole section runs again (at most `retries` times, within the time
        budget) and its last attempt is reported, with every pair counted."""
        log(f"{name} ({time.monotonic() - self.started:.0f} s in)")
        try:
            rows = fn()
            pairs = {r.key: r.judge().pairs_run for r in rows}
            for _ in range(retries):
                noisy = [r.key for r in rows if r.noisy]
                if not noisy or time.monotonic() - self.started > self.cfg.budget_s:
                    break
                log(f"{name}: {', '.join(noisy)} wider than ±{SPREAD_LIMIT:.0%}: again")
                rows = fn()
                for r in rows:
                    pairs[r.key] = pairs.get(r.key, 0) + r.judge().pairs_run
            for r in rows:
                r.pairs_run = pairs.get(r.key, r.pairs_run)
            self.rows += rows
        except Exception as e:
            traceback.print_exc()
            why = f"{type(e).__name__}: {e}"[:300]
            self.rows += [failed_row(k, name, m, u, g, why) for k, m, u, g in fallback]

    def run(self) -> int:
        from bench.c10k import c10k
        from bench.correlator_rows import (
            HELD_KB_GOAL,
            RATE_GOAL,
            VS_READ_GOAL,
            BigReplay,
            correlator_scaling,
        )
        from bench.correlator_rows import correlator_throughput as corr_tp
        from bench.event_loss import loss_onset, loss_row
        from bench.lab_overhead import full_lab
        from bench.pipeline import bus_capacity
        from bench.probe_overhead import probe_overhead
        from bench.rates import BomberFigures, connection_rate

        cfg = self.cfg
        # Free ports, not fixed ones: another bench (a test, a colleague's
        # worktree) may run at the same time on this machine.
        ports = {name: free_port() for name in ("rate", "probes", "onset", "c10k")}
        c_exe = build_c()
        try:
            go_exe: Path | None = build_go()
        except Exception as e:
            log(f"the Go client could not be built: {e}")
            go_exe = None
        big = BigReplay(cfg.big_events, self.started + cfg.budget_s, cfg.big_raw)
        big.start()
        fig = BomberFigures()

        def lab() -> list[Row]:
            rows, self.details["lab"] = full_lab(
                cfg.lab_count, cfg.lab_rounds, cfg.extra_pairs, fig
            )
            return rows

        def onset() -> list[Row]:
            row, self.details["loss_onset"] = loss_onset(
                c_exe, ports["onset"], cfg.levels, cfg.level_s, fig
            )
            return [row]

        rate, cpu = "conn/s", "µs CPU/conn"
        extra = cfg.extra_pairs
        # Equal idle conditions in both arms of every bomber ratio.
        with idle_spinners():
            self.section(
                "Connection rate",
                lambda: connection_rate(
                    c_exe, ports["rate"], cfg.rate_count, cfg.rate_rounds, extra, fig
                ),
                [
                    ("conn_rate", "bomber vs C connect loop", rate, ">= 0.95"),
                    ("conn_rate_cpu", "CPU per connection: bomber vs C loop", cpu, "—"),
                ],
            )
            self.section(
                "Observation overhead",
                lambda: probe_overhead(
                    c_exe, ports["probes"], cfg.rate_count, cfg.probe_rounds, extra, fig
                ),
                [
                    ("probe_overhead", "bomber with probes / without", rate, ">= 0.95"),
                    ("probe_overhead_cpu", "bomber CPU with probes / without", cpu, "—"),
                ],
            )
            self.section(
                "Observation overhead",
                lab,
                [
                    ("lab_overhead", "bomber under the full lab / alone", rate, ">= 0.90"),
                    ("lab_records", "full lab without the actors' records / alone", rate, "—"),
                    ("lab_cpu", "CPU per connection: full lab vs alone", cpu, "—"),
                ],
            )
            self.section(
                "Event loss",
                onset,
                [("loss_onset", "loss-free event rate vs bomber's", "events/s", ">= 2.0")],
            )
        self.rows.append(loss_row(fig))
        bomber_events = sorted(fig.event_rates)[len(fig.event_rates) // 2] if fig.event_rates else 0
        self.section(
            "Pipeline capacity",
            lambda: bus_capacity(cfg.bus_batches, cfg.bus_rounds, bomber_events),
            [
                ("bus_capacity", "EventSender -> Hub vs raw", "events/s", "—"),
                ("bus_vs_bomber", "bus capacity vs bomber events/s", "events/s", "—"),
            ],
            cfg.retries,
        )
        self.section(
            "Pipeline capacity",
            lambda: corr_tp(cfg.corr_events, cfg.corr_rounds),
            [
                ("correlator_rate", "correlator replay, events per CPU second", "events/s",
                 f"value >= {RATE_GOAL}"),
                ("correlator_replay", "correlator replay vs read", "events/s", VS_READ_GOAL),
            ],
            cfg.retries,
        )  # fmt: skip
        n = cfg.mux_sizes[-1]
        self.section(
            "C10k",
            lambda: c10k(go_exe, ports["c10k"], cfg.mux_sizes, cfg.mux_s),
            [
                ("c10k_held", "multiplexer connections held", "connections", f"value >= {n}"),
                ("c10k_rss", "multiplexer RSS per connection", "KB/conn", "value <= 1.0"),
                ("c10k_threads", "multiplexer threads", "threads", "value <= 2"),
            ]
            + [
                (f"mux_scale_{i + 1}", f"multiplexer at {s}", "KB/conn", "value <= 1.0")
                for i, s in enumerate(cfg.mux_sizes)
            ],
        )
        self.section(
            "Scaling",
            lambda: correlator_scaling(cfg.corr_sizes),
            [
                (f"correlator_scale_{i + 1}", f"correlator at {s} held", "events/s", "—")
                for i, s in enumerate(cfg.corr_sizes)
            ]
            + [("correlator_held_kb", "correlator: RSS growth per held connection",
                "KB/held conn", f"value <= {HELD_KB_GOAL}")],
        )  # fmt: skip
        from bench.snapshots import snapshot_speed

        socks = 1000 if cfg.mode == "tiny" else 10_000
        self.section(
            "Socket snapshots",
            lambda: snapshot_speed(socks, cfg.rate_rounds, cfg.extra_pairs),
            [
                ("snapshot_vs_ss", f"snapshot of {socks} sockets vs `ss -tin`", "s", "<= 1.0"),
                ("snapshot_vs_pyroute2", "snapshot vs pyroute2 decoding", "s", "—"),
                ("snapshot_ms", f"one snapshot of {socks} sockets", "ms", "<= 100"),
            ],
        )
        from bench.fdio import barrier_cost

        fdio_bytes = (64 if cfg.mode == "tiny" else 1024) << 20
        fdio_count = cfg.rate_count
        with idle_spinners():
            self.section(
                "Syscall barrier",
                lambda: barrier_cost(
                    fdio_bytes, fdio_count, cfg.rate_rounds, cfg.extra_pairs, c_exe
                ),
                [
                    ("fdio_bulk", "bulk transfer: CPU per MiB with fdio / without", "µs/MiB",
                     "<= 1.05"),
                    ("fdio_bomber", "bomber + C server: CPU per connection with fdio / without",
                     "µs/conn", "<= 1.05"),
                ],
            )  # fmt: skip
        from bench.internals import internals_cost

        mb = 100 if cfg.mode == "tiny" else 500
        self.section(
            "TCP internals",
            lambda: internals_cost(mb, cfg.rate_rounds, cfg.extra_pairs),
            [
                (
                    "internals_cpu",
                    "bulk transfer: CPU per MiB, every probe / none",
                    "µs/MiB",
                    "<= 1.05",
                ),
                ("internals_throughput", "bulk transfer, every probe / none", "B/s", "—"),
                ("internals_probe_cpu", "the probe process's CPU per MiB", "µs/MiB", "—"),
                ("internals_lost", "events lost with every probe", "events", "== 0"),
                ("internals_sampling", "tcp_probe events vs hits", "events/s", "—"),
            ],
        )
        log(f"waiting for the {cfg.big_events:,}-event replay (stops at the budget)")
        self.rows += big.rows()
        # Rows in the order, whatever order the sections ran in.
        order = ["Connection rate", "Observation overhead", "Event loss", "Pipeline capacity"]
        order += ["C10k", "Scaling", "Socket snapshots", "Syscall barrier", "TCP internals"]
        self.rows.sort(key=lambda r: order.index(r.section) if r.section in order else 99)
        for r in self.rows:
            r.judge()
        explain(self.rows)
        return self.report()

    def report(self) -> int:
        took = time.monotonic() - self.started
        meta = {
            "date": datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": machine(),
            "mode": self.cfg.mode,
            "seconds": round(took),
            "load_before": self.details.get("load_before"),
        }
        self.out.mkdir(parents=True, exist_ok=True)
        data = {**meta, "rows": [r.as_dict() for r in self.rows], "details": self.details}
        (self.out / "latest.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
        (self.out / "latest.md").write_text(markdown(meta, self.rows))
        print(text_table(meta, self.rows))
        print(f"\nwritten: {self.out / 'latest.json'}, {self.out / 'latest.md'}")
        return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_const", const="quick", dest="mode")
    g.add_argument("--tiny", action="store_const", const="tiny", dest="mode")
    p.add_argument("--out", type=Path, default=OUT, help="where latest.json/.md go")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("python -m bench: error: run as root (sudo make bench): probes and namespaces")
        return 2
    runner = Runner(config(args.mode or "full"), args.out)
    runner.details["load_before"] = os.getloadavg()
    return runner.run()


if __name__ == "__main__":
    sys.exit(main())
