"""Timeline rows: every item as events.jsonl shows it, with its owner.

A row shows the owner known a grace (`grace_ns` of event time) after it, so
that an owner fact logged just after a transition still reaches it: the row
settles once an item at least that much newer has been handled. Rows settle
in position order; those whose grace runs past the chunk wait for the next.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import polars as pl

from correlator.joins import Joins
from correlator.lifecycles import Conn
from correlator.outcomes import errno_name, seconds
from correlator.phases import Phases

_EXACT_NS = 10**15
_END = 1 << 62


class Rows:
    def __init__(
        self,
        joins: Joins,
        counts: dict[str, int],
        t0: int,
        grace_ns: int,
        phases: Phases,
        want_dicts: bool = True,
    ) -> None:
        self.joins = joins
        self.n = counts
        self.t0 = t0
        self.grace = grace_ns
        self.phases = phases
        self.want_dicts = want_dicts
        self.conns: dict[int, Conn] = {}
        # Rows not settled yet: (pos, settle target time, kind, fields).
        self.pending: list[tuple[int, int, str, Any]] = []
        self.max_pending = 0
        self.written = 0
        self.out: list[dict[str, Any]] = []

    def chunk(
        self,
        frames: dict[str, pl.DataFrame],
        app: list[tuple[int, dict[str, Any]]],
        now: np.ndarray,
        base: int,
        ts_sorted: np.ndarray,
    ) -> None:
        grace = self.grace
        new: list[tuple[int, int, str, Any]] = []
        tcp = frames.get("tcp_state")
        if tcp is not None:
            cols = tcp.select(
                "pos",
                "ts",
                "conn",
                "old",
                "new",
                "skaddr",
                "saddr",
                "sport",
                "daddr",
                "dport",
                "cpu_pid",
                "cpu_comm",
            )
            new.extend((r[0], r[1], "tcp_state", r) for r in cols.iter_rows())
        acc = frames.get("accept")
        if acc is not None:
            cols = acc.select(
                "pos",
                "ts",
                "pid",
                "tid",
                "syscall",
                "lfd",
                "fd",
                "errno",
                "peer_addr",
                "peer_port",
                "dur_ns",
            )
            new.extend((r[0], r[1], "accept", r) for r in cols.iter_rows())
        ep = frames.get("epoll")
        if ep is not None:
            cols = ep.select(
                "pos",
                "ts",
                "pid",
                "tid",
                "syscall",
                "epfd",
                "ready",
                "errno",
                "timeout_ms",
                "dur_ns",
            )
            new.extend((r[0], r[1], "epoll", r) for r in cols.iter_rows())
        new.extend((p, rec["mono_ns"], "app", rec) for p, rec in app)
        new.sort(key=lambda r: r[0])
        # The settle target: the newest time once the row is handled, plus the grace.
        nowl = now.tolist()
        rows = self.pending + [(p, nowl[p - base] + grace, k, f) for p, _, k, f in new]
        targets = np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows))
        at = np.searchsorted(now, targets, side="left")
        ready = int(np.searchsorted(at, len(now), side="left"))
        # `at` rises with the rows: those past the chunk end wait, in order.
        self._settle(rows[:ready], (at[:ready] + base).tolist())
        self.pending = rows[ready:]
        self.max_pending = max(self.max_pending, len(self.pending))

    def end(self) -> None:
        self._settle(self.pending, [_END] * len(self.pending))
        self.pending = []

    def _settle(self, rows: list[tuple[int, int, str, Any]], at: list[int]) -> None:
        n = self.n
        j = self.joins
        pid_actor, learnt = j.pid_actor, j.pid_learnt
        any_actor = min(learnt.values()) if learnt else None
        phase_of = self.phases.of
        conns = self.conns
        states = owned = 0
        emit = self.out.append
        for (_pos, _target, kind, f), when in zip(rows, at, strict=True):
            if kind == "tcp_state":
                p, ts, cid, old, new, sk, saddr, sport, daddr, dport, cpu, comm = f
                conn = conns[cid]
                owner = None
                for hp, o in reversed(conn.owner_hist):
                    if hp <= when:
                        if o[1] is not None:
                            owner = {"actor": o[0], "pid": o[1], "fd": o[2], "via": o[3]}
                        break
                states += 1
                if owner is not None:
                    owned += 1
                if self.want_dicts:
                    emit(
                        {
                            "ts": ts,
                            "src": "kernel",
                            "type": "tcp_state",
                            "conn": cid,
                            "old": old,
                            "new": new,
                            "skaddr": sk,
                            "saddr": saddr,
                            "sport": sport,
                            "daddr": daddr,
                            "dport": dport,
                            "cpu_pid": cpu,
                            "cpu_comm": comm,
                            "t": self._t(ts),
                            "phase": phase_of(ts),
                            "owner": owner,
                            "cpu_is_owner": owner is not None and cpu == owner["pid"],
                        }
                    )
                continue
            if kind == "app":
                rec = f
                if self.want_dicts:
                    row: dict[str, Any] = {
                        "ts": rec["mono_ns"],
                        "src": "app",
                        "type": str(rec.get("event", "")),
                        "conn": j.app_conn.get(_pos),
                    }
                    row.update(rec)
                    row.pop("event", None)
                    row.pop("mono_ns", None)
                    row["t"] = self._t(row_ts := rec["mono_ns"])
                    row["phase"] = phase_of(row_ts)
                    emit(row)
                continue
            pid = f[2]
            actor = pid_actor.get(pid) if learnt.get(pid, _END) <= when else None
            typ = kind
            if actor is None and any_actor is not None and any_actor <= when:
                for k in ("kernel.outside_lab", f"kernel.outside_lab_{typ}"):
                    n[k] = n.get(k, 0) + 1
            else:
                k = f"coverage.kernel_{typ}"
                n[k] = n.get(k, 0) + 1
                if actor is not None:
                    k = f"coverage.kernel_{typ}_owned"
                    n[k] = n.get(k, 0) + 1
            if not self.want_dicts:
                continue
            if kind == "accept":
                p, ts, pid, tid, syscall, lfd, fd, err, peer, port, dur = f
                emit(
                    {
                        "ts": ts,
                        "src": "kernel",
                        "type": "accept",
                        "conn": j.accept_conn.get(p),
                        "pid": pid,
                        "actor": actor,
                        "tid": tid,
                        "syscall": syscall,
                        "lfd": lfd,
                        "fd": fd,
                        "error": errno_name(err) if err else None,
                        "peer_addr": peer,
                        "peer_port": port,
                        "dur_ns": dur,
                        "t": self._t(ts),
                        "phase": phase_of(ts),
                    }
                )
            else:
                p, ts, pid, tid, syscall, epfd, ready, err, timeout, dur = f
                emit(
                    {
                        "ts": ts,
                        "src": "kernel",
                        "type": "epoll",
                        "pid": pid,
                        "actor": actor,
                        "tid": tid,
                        "syscall": syscall,
                        "epfd": epfd,
                        "ready": ready,
                        "error": errno_name(err) if err else None,
                        "timeout_ms": timeout,
                        "dur_ns": dur,
                        "t": self._t(ts),
                        "phase": phase_of(ts),
                    }
                )
        if states:
            n["coverage.kernel_tcp_state"] = n.get("coverage.kernel_tcp_state", 0) + states
        if owned:
            k = "coverage.kernel_tcp_state_owned"
            n[k] = n.get(k, 0) + owned
        self.written += len(rows)

    def _t(self, ts: int) -> float | None:
        if not self.t0:
            return None
        d = ts - self.t0
        return d / 1e9 if -_EXACT_NS < d < _EXACT_NS else seconds(d)

    def take(self) -> Iterator[dict[str, Any]]:
        out, self.out = self.out, []
        return iter(out)
