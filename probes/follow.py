"""`tcplab watch -p PID` follows the process's children.

The proc probe (probes/proc.bpf.c) reports every fork of a traced process;
a child that is a process (not a thread of the same one: its Tgid in
/proc/PID/status is itself) joins the pid filter of every probe. The proc
program has already added it to its own filter, so a grandchild forked
meanwhile is followed too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from probes.loader import Filters, ProbeSet


def is_process(pid: int) -> bool:
    """True if pid is a thread group leader (a process), False for a thread or a gone task."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Tgid:"):
                    return int(line.split()[1]) == pid
    except OSError:
        pass
    return False


class Follower:
    def __init__(self, probes: ProbeSet, filters: Filters) -> None:
        self.probes = probes
        self.filters = filters

    def feed(self, events: Iterable[dict[str, Any]]) -> list[int]:
        """Add the forked processes among `events` to the filters; the pids added."""
        new = [
            e["child"] for e in events
            if e["type"] == "proc" and e["what"] == "fork"
            and e["child"] not in self.filters.pids and is_process(e["child"])
        ]  # fmt: skip
        if new:
            self.filters = replace(self.filters, pids=self.filters.pids | set(new))
            self.probes.set_filters(self.filters)
        return new
