"""What a person sees while a run goes on: a live terminal view (rich), or one
JSON line a second for scripts, or nothing.
"""

from __future__ import annotations

import json
import sys
import time
from types import TracebackType
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

STATE_ORDER = (
    "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT",
    "CLOSE_WAIT", "LAST_ACK", "CLOSING", "LISTEN",
)


class LiveView:
    """Shows the status dicts it is given (LabRun.status()): it knows
    nothing of the run itself."""

    def __init__(self, mode: str, scenario: str, duration_s: float) -> None:
        self.mode = mode
        self.scenario = scenario
        self.duration_s = duration_s
        self._live: Live | None = None
        self._status: dict[str, Any] = {"scenario": scenario, "phase": "setup"}
        self._last = 0.0
        self._last_phase = ""
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
            self._live = None

    def refresh(self, status: dict[str, Any]) -> None:
        self._status = status
        now = time.monotonic()
        period = 0.25 if self.mode == "live" else 1.0
        # A new phase shows at once: a script watching --json sees every one.
        new_phase = status.get("phase") != self._last_phase
        if self.mode == "quiet" or (now - self._last < period and not new_phase):
            return
        self._last, self._last_phase = now, str(status.get("phase"))
        total = sum(status.get("kernel_events", {}).values())
        if now > self._last_time:
            self.events_per_s = (total - self._last_events) / max(now - self._last_time, 1e-3)
        self._last_events, self._last_time = total, now
        if self._live is not None:
            self._live.update(self._render(), refresh=True)
        elif self.mode == "json":
            line = {**status, "kernel_events_per_s": round(self.events_per_s)}
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()

    def note(self, phase: str) -> None:
        """A step after the run that takes a while, such as building the report."""
        if self.mode == "json":
            sys.stdout.write(json.dumps({"scenario": self.scenario, "phase": phase}) + "\n")
            sys.stdout.flush()
        elif self.mode == "live":
            Console(stderr=True).print(Text(f"{self.scenario}: {phase}", style="bold yellow"))

    def _render(self) -> Group:
        s = self._status
        elapsed, in_phases = s.get("elapsed_s", 0.0), s.get("phases_elapsed_s", 0.0)
        # Set-up (namespace, probes, actors) has no planned length: shown
        # apart, so the phases' clock runs against the phases' total.
        head = Text.assemble(
            ("tcplab ", "bold"), (self.scenario, "bold cyan"), "  phase ",
            (s["phase"], "bold yellow"),
            f"  {elapsed:.0f}s: set-up {elapsed - in_phases:.0f}s, "
            f"phases {in_phases:.0f}s of {self.duration_s:.0f}s",
        )
        states = Table(title="TCP states in the lab", title_justify="left")
        states.add_column("seen by")
        for name in STATE_ORDER:
            states.add_column(name, justify="right")
        states.add_row("sock_diag", *[str(s.get("states", {}).get(n, 0)) for n in STATE_ORDER])
        # Sockets per state from the tracepoint's transitions (raw batches
        # summed with numpy); it never reports TIME_WAIT (a timewait sock takes over).
        kernel = s.get("kernel_states", {})
        states.add_row(
            "tracepoint", *[str(kernel.get(n, 0)) if n != "TIME_WAIT" else "-" for n in STATE_ORDER]
        )
        flow = Table.grid(padding=(0, 2))
        lost = s.get("lost", {})
        flow.add_row(
            f"kernel events {sum(s.get('kernel_events', {}).values())} "
            f"({self.events_per_s:.0f}/s)",
            f"app records {s.get('log_records', 0)}",
            Text(
                f"lost: kernel {lost.get('kernel_drops', 0)}  bus gaps {lost.get('bus_gaps', 0)}  "
                f"rejected {lost.get('bus_rejected', 0)}",
                style="red" if any(lost.values()) else "green",
            ),
        )
        actors = Table(title="actors", title_justify="left")
        for col in ("name", "pid", "health", "progress"):
            actors.add_column(col)
        for name, a in s.get("actors", {}).items():
            health = (
                Text("running", "green") if a["exit_code"] is None
                else Text(f"crashed ({a['exit_code']})", "red") if a["crashed"]
                else Text(f"exited ({a['exit_code']})")
            )
            progress = s.get("progress", {}).get(name, {})
            shown = ", ".join(f"{k}={v}" for k, v in progress.items()
                              if k != "source" and isinstance(v, int | float))
            actors.add_row(name, str(a["pid"]), health, shown[:80])
        parts: list[Any] = [head, states, flow, actors]
        parts += [Text(e, style="red") for e in s.get("errors", [])]
        return Group(*parts)
