"""`tcplab watch -p PID`: the process, its children, and the sockets they own.

A pid filter in the kernel passes what runs on that pid's CPU time; a
server's sockets change state in softirq, on whatever CPU time the packet
found (often the client's): tcp_state would miss the server's CLOSE_WAITs.
So tcp_state gets the port filters only, and watch keeps the transitions
that ran on a traced pid or whose socket a traced pid owns
(probes/owners.py), as `keep()` says.

The proc probe (probes/proc.bpf.c) reports every fork of a traced process;
a child that is a process (not a thread of the same one: its Tgid in
/proc/PID/status is itself) joins the pid filter of every probe. The proc
program has already added it to its own filter, so a grandchild forked
meanwhile is followed too.
"""

from __future__ import annotations

import sys
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


# Probes whose events are kept by their socket's owner in user space.
BY_OWNER = ("tcp_state",)


class Follower:
    def __init__(self, probes: ProbeSet, filters: Filters) -> None:
        self.probes = probes
        self.filters = filters
        self.full = False  # the pid filter could take no more children
        self.apply()

    def apply(self) -> None:
        """The filters into every probe; tcp_state without the pids (see above)."""
        for name, probe in self.probes.probes.items():
            if name in BY_OWNER and self.filters.pids:
                probe.set_filters(replace(self.filters, pids=set()))
            else:
                probe.set_filters(self.filters)

    def keep(self, e: dict[str, Any]) -> bool:
        pids = self.filters.pids
        if pids and e["type"] in ("stuck", "stuck_at_end"):
            return e["owner_pid"] in pids
        if not pids or e["type"] not in BY_OWNER:
            return True
        return e["cpu_pid"] in pids or e.get("owner_pid") in pids

    def feed(self, events: Iterable[dict[str, Any]]) -> list[int]:
        """Add the forked processes among `events` to the filters; the pids added."""
        new = [
            e["child"] for e in events
            if e["type"] == "proc" and e["what"] == "fork"
            and e["child"] not in self.filters.pids and is_process(e["child"])
        ]  # fmt: skip
        if not new:
            return []
        before = self.filters
        self.filters = replace(before, pids=before.pids | set(new))
        try:
            self.apply()
        except Exception as e:  # the kernel's filter map is full (TCPLAB_FILTER_MAX)
            self.filters = before
            self.apply()
            if not self.full:
                self.full = True
                print(f"tcplab watch: not following more children: {e}", file=sys.stderr)
            return []
        return new
