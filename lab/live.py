"""What a person sees while a run goes on: a live terminal view (rich), or one
JSON line a second for scripts, or nothing.

The writing is done on a thread of its own, never on the run's loop: a write
to a pipe or terminal that nobody reads (`tcplab run --json | less` scrolled
back, a terminal paused with Ctrl-S) blocks, and on the loop it held back the
heartbeats the actors and probes wait for (they give up after 3 s). The loop
only hands over what to write; the lines keep their order.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

STATE_ORDER = (
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE_WAIT",
    "LAST_ACK",
    "CLOSING",
    "LISTEN",
)


# How long the end of a run waits for output nobody reads before it goes on.
WRITER_CLOSE_S = 5.0


class Writer:
    """Runs the writes it is given, in order, on its own thread; after the
    first one that fails (a reader that went away) it drops the rest."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Callable[[], object] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="view", daemon=True)
        self.error: OSError | None = None

    def start(self) -> Writer:
        self._thread.start()
        return self

    def put(self, write: Callable[[], object]) -> None:
        self._queue.put(write)

    def _run(self) -> None:
        while (write := self._queue.get()) is not None:
            if self.error is None:
                try:
                    write()
                except OSError as e:
                    self.error = e

    def close(self, timeout_s: float = WRITER_CLOSE_S) -> None:
        """Let the queued writes finish (for `timeout_s` at most: a reader that
        stopped reading must not keep the run from ending)."""
        self._queue.put(None)
        self._thread.join(timeout_s)


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
        self._writer: Writer | None = None

    def __enter__(self) -> LiveView:
        if self.mode == "live":
            self._live = Live(self._render(), console=Console(stderr=True), auto_refresh=False)
            self._live.__enter__()
        if self.mode != "quiet":
            self._writer = Writer().start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._live is not None:
            self._live.update(self._render(), refresh=True)
            self._live.__exit__(et, e, tb)
            self._live = None

    def _write(self, write: Callable[[], object]) -> None:
        """On the writer's thread while the run goes on; here after it."""
        if self._writer is not None:
            self._writer.put(write)
        else:
            write()

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
            live, shown = self._live, self._render()
            self._write(lambda: live.update(shown, refresh=True))
        elif self.mode == "json":
            line = json.dumps({**status, "kernel_events_per_s": round(self.events_per_s)})
            self._write(lambda: _print(line))

    def note(self, phase: str) -> None:
        """A step after the run that takes a while, such as building the report."""
        if self.mode == "json":
            line = json.dumps({"scenario": self.scenario, "phase": phase})
            self._write(lambda: _print(line))
        elif self.mode == "live":
            Console(stderr=True).print(Text(f"{self.scenario}: {phase}", style="bold yellow"))

    def _render(self) -> Group:
        s = self._status
        elapsed, in_phases = s.get("elapsed_s", 0.0), s.get("phases_elapsed_s", 0.0)
        # Set-up (namespace, probes, actors) has no planned length: shown
        # apart, so the phases' clock runs against the phases' total.
        head = Text.assemble(
            ("tcplab ", "bold"),
            (self.scenario, "bold cyan"),
            "  phase ",
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
            f"kernel events {sum(s.get('kernel_events', {}).values())} ({self.events_per_s:.0f}/s)",
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
                Text("running", "green")
                if a["exit_code"] is None
                else Text(f"crashed ({a['exit_code']})", "red")
                if a["crashed"]
                else Text(f"exited ({a['exit_code']})")
            )
            progress = s.get("progress", {}).get(name, {})
            shown = ", ".join(
                f"{k}={v}"
                for k, v in progress.items()
                if k != "source" and isinstance(v, int | float)
            )
            actors.add_row(name, str(a["pid"]), health, shown[:80])
        parts: list[Any] = [head, states, flow, actors]
        parts += [Text(e, style="red") for e in s.get("errors", [])]
        return Group(*parts)


def _print(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
