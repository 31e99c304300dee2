"""What a person sees while a run goes on: a live terminal view (rich), or one
JSON line a second for scripts, or nothing.
"""

from __future__ import annotations

import json
import sys
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from lab.run import LabRun

STATE_ORDER = (
    "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT",
    "CLOSE_WAIT", "LAST_ACK", "CLOSING", "LISTEN",
)


class LiveView:
    def __init__(self, run: LabRun, mode: str) -> None:
        self.run = run
        self.mode = mode
        self._live: Live | None = None
        self._last = 0.0
        self._last_events = 0
        self._last_time = time.monotonic()
        self.events_per_s = 0.0

    def __enter__(self) -> LiveView:
        if self.mode == "live":
            self._live = Live(self._render(), console=Console(stderr=True), auto_refresh=False)
            self._live.__enter__()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._live is not None:
            self._live.update(self._render(), refresh=True)
            self._live.__exit__(et, e, tb)

    def refresh(self) -> None:
        now = time.monotonic()
        period = 0.25 if self.mode == "live" else 1.0
        if self.mode == "quiet" or now - self._last < period:
            return
        self._last = now
        total = sum(self.run.tally.kernel_events.values())
        self.events_per_s = (total - self._last_events) / max(now - self._last_time, 1e-3)
        self._last_events, self._last_time = total, now
        if self._live is not None:
            self._live.update(self._render(), refresh=True)
        elif self.mode == "json":
            sys.stdout.write(json.dumps(self.status()) + "\n")
            sys.stdout.flush()

    def status(self) -> dict[str, Any]:
        run, tally = self.run, self.run.tally
        ledger = run.hub.events_ledger
        return {
            "scenario": run.scenario.name,
            "phase": run.phase,
            "elapsed_s": round(time.monotonic_ns() / 1e9 - run.started_mono_ns / 1e9, 1),
            "states": tally.states,
            "kernel_events": tally.kernel_events,
            "kernel_events_per_s": round(self.events_per_s),
            "log_records": tally.log_records,
            "lost": {
                "kernel_drops": tally.kernel_drops,
                "bus_gaps": len(ledger.gaps),
                "bus_rejected": sum(ledger.rejected.values()),
            },
            "actors": {
                n: {"pid": p.pid, "exit_code": p.exit_code, "crashed": p.crashed}
                for n, p in run.sup.processes.items()
            },
            "progress": tally.progress,
            "errors": tally.errors[-3:],
        }

    def _render(self) -> Group:
        s = self.status()
        head = Text.assemble(
            ("tcplab ", "bold"), (s["scenario"], "bold cyan"), "  phase ",
            (s["phase"], "bold yellow"), f"  {s['elapsed_s']:.0f}s / "
            f"{self.run.scenario.duration_s:.0f}s",
        )
        states = Table(title="TCP states in the lab (sock_diag)", title_justify="left")
        for name in STATE_ORDER:
            states.add_column(name, justify="right")
        states.add_row(*[str(s["states"].get(n, 0)) for n in STATE_ORDER])
        flow = Table.grid(padding=(0, 2))
        lost = s["lost"]
        flow.add_row(
            f"kernel events {sum(s['kernel_events'].values())} ({s['kernel_events_per_s']}/s)",
            f"app records {s['log_records']}",
            Text(
                f"lost: kernel {lost['kernel_drops']}  bus gaps {lost['bus_gaps']}  "
                f"rejected {lost['bus_rejected']}",
                style="red" if any(lost.values()) else "green",
            ),
        )
        actors = Table(title="actors", title_justify="left")
        for col in ("name", "pid", "health", "progress"):
            actors.add_column(col)
        for name, a in s["actors"].items():
            health = (
                Text("running", "green") if a["exit_code"] is None
                else Text(f"crashed ({a['exit_code']})", "red") if a["crashed"]
                else Text(f"exited ({a['exit_code']})")
            )
            progress = s["progress"].get(name, {})
            shown = ", ".join(f"{k}={v}" for k, v in progress.items()
                              if k != "source" and isinstance(v, int | float))
            actors.add_row(name, str(a["pid"]), health, shown[:80])
        parts: list[Any] = [head, states, flow, actors]
        parts += [Text(e, style="red") for e in s["errors"]]
        return Group(*parts)
