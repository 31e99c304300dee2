"""What the live view shows and run.json keeps: counts as the bus brings them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bus.rawbatch import count, decode_batch
from bus.rawconvert import state_balance
from bus.schema import Envelope, Kind
from lab.supervisor import PROBES


@dataclass
class Tally:
    """What the live view shows and run.json keeps: counts as they arrive."""

    log_records: int = 0
    kernel_events: dict[str, int] = field(default_factory=dict)
    kernel_drops: int = 0
    states: dict[str, int] = field(default_factory=dict)
    # Sockets per TCP state number as the tracepoint saw them change (entered
    # minus left), summed over the raw batches with numpy: no dict per event.
    kernel_states: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))
    progress: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Final reports of actors that said their work is done: kept apart from
    # `progress`, which the next periodic report (without `done`) replaces.
    finished: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    # The probes' clock at their last frame: the kernel view is known
    # complete up to here, whatever happens to the probe process later.
    probes_last_mono_ns: int | None = None

    def add(self, env: Envelope) -> None:
        body = env.body
        if env.sender == PROBES:
            self.probes_last_mono_ns = env.mono_ns
        if env.kind is Kind.LOG:
            self.log_records += len(body["records"])
        elif env.kind is Kind.KERNEL:
            probe = str(body.get("probe", "?"))
            self.kernel_events[probe] = self.kernel_events.get(probe, 0) + len(body["events"])
        elif env.kind is Kind.KERNEL_RAW:
            probe = body["probe"]
            self.kernel_events[probe] = self.kernel_events.get(probe, 0) + count(body)
            if probe == "tcp_state":
                self.kernel_states += state_balance(decode_batch(body))
        elif env.kind is Kind.STATS:
            source = body["source"]
            if source == "observer":
                # The observer's progress reports carry no states: they must
                # not blank the table until the next sample.
                if "states" in body:
                    self.states = dict(body["states"])
            elif source == PROBES:
                programs = body.get("programs", {})
                self.kernel_drops = sum(int(p.get("drops", 0)) for p in programs.values())
            else:
                self.progress[source] = body
                if body.get("done"):
                    self.finished[source] = body
