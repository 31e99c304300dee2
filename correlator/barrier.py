"""The syscall barrier's facts about stuck sockets: EOF read, never closed.

Fed the recording's fdio batches (probes/fdio.bpf.c: an event when a
traced process's socket fd reads EOF, is closed, or fails); everything
else is ignored. `finish(run_dir)` reads the run's connections.jsonl and,
for each socket stuck in CLOSE_WAIT, asks the kernel's own record of its
owner's fd: did a read return 0 (the peer's FIN seen by the application)
and did close() ever come? That is the seed's CLOSE_WAIT lesson from the
kernel alone, whatever the program logs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bus import rawconvert
from bus.schema import Envelope, Kind


@dataclass
class FdFacts:
    eof_ts: int = 0
    closed_ts: int = 0


# The running counters an fdio event carries for its fd (the last one seen
# per fd holds the totals).
IO_COUNTERS = ("reads", "eagain_reads", "writes", "eagain_writes")


def _ranges(fds: list[int]) -> str:
    """7, 8, 9, 12 -> '7–9, 12' (at most a few runs shown)."""
    runs: list[list[int]] = []
    for fd in sorted(set(fds)):
        if runs and fd == runs[-1][1] + 1:
            runs[-1][1] = fd
        else:
            runs.append([fd, fd])
    text = [f"{a}–{b}" if b > a else str(a) for a, b in runs[:4]]
    return ", ".join(text) + (", …" if len(runs) > 4 else "")


class Barrier:
    """Feed every envelope; finish() once connections.jsonl is written."""

    def __init__(self) -> None:
        # (pid, fd) -> facts, and skaddr -> facts (the same object), from the
        # last incarnation of that fd seen.
        self.by_fd: dict[tuple[int, int], FdFacts] = {}
        self.by_sk: dict[int, FdFacts] = {}
        # (pid, fd, opened_ts) -> the fd's counters at its last event.
        self.io: dict[tuple[int, int, int], tuple[int, ...]] = {}
        self.events = 0

    def feed(self, env: Envelope) -> None:
        if env.kind is not Kind.KERNEL_RAW or env.body.get("probe") != "fdio":
            return
        for e in rawconvert.batch_events(env.body):
            self.events += 1
            key = (int(e["pid"]), int(e["fd"]))
            facts = self.by_sk.get(e["skaddr"]) if e["skaddr"] else None
            facts = facts or self.by_fd.get(key) or FdFacts()
            if e["eof_ts"]:
                facts.eof_ts = facts.eof_ts or int(e["eof_ts"])
            if e["what"] == "close":
                facts.closed_ts = int(e["ts"])
            self.by_fd[key] = facts
            if e["skaddr"]:
                self.by_sk[int(e["skaddr"])] = facts
            self.io[(*key, int(e["opened_ts"]))] = tuple(int(e[c]) for c in IO_COUNTERS)

    def _facts(self, conn: dict[str, Any]) -> FdFacts | None:
        owner = conn.get("owner") or {}
        facts = self.by_sk.get(int(conn.get("skaddr") or 0))
        if facts is None and owner.get("pid") is not None and owner.get("fd") is not None:
            facts = self.by_fd.get((int(owner["pid"]), int(owner["fd"])))
        return facts

    def finish(self, run_dir: Path) -> tuple[dict[str, Any], list[str]]:
        """Counts (`barrier.*` for expectations) and the diagnosis sentences."""
        if not self.events:
            return {}, []
        stuck: dict[tuple[str, int], list[tuple[dict[str, Any], FdFacts | None]]] = {}
        path = run_dir / "connections.jsonl"
        with open(path) as f:
            for line in f:
                conn = json.loads(line)
                if conn.get("outcome") != "stuck_close_wait" or not conn.get("owner"):
                    continue
                owner = conn["owner"]
                key = (str(owner.get("actor") or "pid"), int(owner.get("pid") or 0))
                stuck.setdefault(key, []).append((conn, self._facts(conn)))
        eof = never = both = 0
        sentences = []
        for (actor, pid), items in sorted(stuck.items(), key=lambda kv: -len(kv[1])):
            n_eof = sum(1 for _, f in items if f is not None and f.eof_ts)
            n_never = sum(1 for _, f in items if f is not None and not f.closed_ts)
            n_both = sum(1 for _, f in items if f is not None and f.eof_ts and not f.closed_ts)
            eof, never, both = eof + n_eof, never + n_never, both + n_both
            if not n_both:
                continue
            fds = [int(c["owner"]["fd"]) for c, _ in items if c["owner"].get("fd") is not None]
            where = f", fds {_ranges(fds)}" if fds else ""
            each = "each" if n_both == len(items) else f"{n_both} of them"
            sentences.append(
                f"The syscall barrier: {len(items)} sockets stuck in CLOSE_WAIT, owned by "
                f"{actor} pid {pid}{where}: {each} read EOF (the peer's FIN reached the "
                "application) and was never closed — the local application's bug."
            )
        by_actor, io_sentences = self._io_by_actor(run_dir)
        counts = {
            "barrier": {
                "fdio_events": self.events,
                "close_wait_eof_read": eof,
                "close_wait_never_closed": never,
                "close_wait_eof_never_closed": both,
                "by_actor": by_actor,
            }
        }
        return counts, sentences + io_sentences

    def _io_by_actor(self, run_dir: Path) -> tuple[dict[str, dict[str, int]], list[str]]:
        """Per actor (its processes' socket fds): reads and how many found
        nothing yet (EAGAIN: a non-blocking reader goes back to epoll_wait)."""
        try:
            meta = json.loads((run_dir / "run.json").read_text())
        except (OSError, ValueError):
            meta = {}
        names = {
            int(a["pid"]): n
            for n, a in (meta.get("actors") or {}).items()
            if isinstance(a, dict) and isinstance(a.get("pid"), int)
        }
        names |= {
            int(p): n.split(" (child")[0]
            for n, p in (meta.get("programs") or {}).items()
            if isinstance(p, int)
        }
        # The pid a sentence names: the actor's own, or its program's (not a child's).
        pids = {n: p for p, n in names.items()}
        pids |= {
            n: int(p)
            for n, p in (meta.get("programs") or {}).items()
            if isinstance(p, int) and " (child" not in n
        }
        out: dict[str, dict[str, int]] = {}
        for (pid, _fd, _opened), counters in self.io.items():
            if pid not in names:
                continue
            a = out.setdefault(names[pid], {"fds": 0, **dict.fromkeys(IO_COUNTERS, 0)})
            a["fds"] += 1
            for c, v in zip(IO_COUNTERS, counters, strict=True):
                a[c] += v
        sentences = [
            f"The syscall barrier: {actor} pid {pids[actor]}'s {a['fds']} socket fds made "
            f"{a['reads']} reads, {_eagain(a['eagain_reads'])}, and {a['writes']} writes."
            for actor, a in sorted(out.items())
            if a["reads"]
        ]
        return out, sentences


def _eagain(n: int) -> str:
    if not n:
        return "none of them EAGAIN (it read only what epoll_wait said was ready)"
    return (
        f"{n} of them EAGAIN (nothing to read yet: non-blocking I/O, the reader "
        "went back to epoll_wait)"
    )
