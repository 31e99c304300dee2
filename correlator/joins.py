"""Owners: who holds each connection, from the facts that name it, per chunk.

The kernel's tcp_state events carry whoever was on the CPU, not the owner.
Owner facts come from accept4 (pid, fd, peer), the actors' records (4-tuple,
or (pid, fd)) and two guesses: the on-CPU pid of connect()/listen() (which
run in the caller's context) and the listener's owner for a child still in
the accept queue. Each fact's life comes from joins over the chunk
(correlator/lookups.py); the owners from those facts per life in position
order (correlator/owners.py); what the records do (actions, accepted, app
close) by group-by (correlator/actions.py); the sockets each process holds
(correlator/held_sockets.py). Closed lives stay joinable for `grace_ns` of
event time (correlator/closing.py), then they are finished: their row is
taken, and their outcome decided at the chunk's end (correlator/finishing.py).
The rare cases stay in position order in Python: listeners and listen
records, connect_failed records matched to the failed connects of their
process (correlator/failed_connects.py), stale (pid, fd) facts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl

from correlator import failed_connects
from correlator.actions import Actions, apply_flags
from correlator.closing import find_peers, unindex_at
from correlator.facts import APP_COVERAGE, FactCounts, accept_frame, app_frame
from correlator.finishing import Finishing
from correlator.held_sockets import HeldSockets
from correlator.kept import Kept
from correlator.lifecycles import CLOSE, LEARN, LOST, OPEN, Conn
from correlator.lookups import NEVER, Index
from correlator.owners import SOCKET_ACTIONS, Listeners, Owners, apply_owner_facts
from correlator.phases import Phases


class Joins:
    def __init__(
        self,
        meta: dict[str, Any],
        phases: Phases,
        counts: dict[str, int],
        emit: Callable[[pl.DataFrame], None],
        grace_ns: int,
        t0: int,
        kept: Kept,
    ) -> None:
        self.n = counts
        self.phases = phases
        self.grace = grace_ns
        self.kept = kept
        # Who is who: pid -> actor name, from run.json and from the logs, with
        # the position each was learnt at (rows show the name known then).
        self.pid_actor: dict[int, str] = {}
        self.pid_learnt: dict[int, int] = {}
        for name, info in (meta.get("actors") or {}).items():
            if isinstance(info, dict) and isinstance(info.get("pid"), int):
                self.pid_actor[info["pid"]] = name
                self.pid_learnt[info["pid"]] = -1
        # The programs foreign actors started (actors/foreign.py) are those actors.
        for name, pid in (meta.get("programs") or {}).items():
            if isinstance(pid, int):
                self.pid_actor[pid] = name
                self.pid_learnt[pid] = -1
        self.owners = Owners()
        self.listeners = Listeners(self.owners)
        # Carried from chunk to chunk (correlator/lookups.py): the lives indexed
        # by tuple, the children waiting for accept4, the (pid, fd) claims held.
        self.index = Index()
        self.conns: dict[int, Conn] = {}  # lives a fact may still name, by id
        # Failed connects by the pid that called connect(): their CLOSE->SYN_SENT
        # runs in that process's context, so first_cpu_pid is the caller.
        self.failed: failed_connects.Failed = {}
        self.held = HeldSockets()
        self.conns_by_owner_max = self.held.by_owner_max
        # Closed lives wait for their grace, then they are finished (their rows
        # and outcomes at the chunk's end).
        self.actions = Actions()  # each life's first app actions and counts
        self.finishing = Finishing(
            counts, phases, emit, t0, kept, self.held, self.failed, self.listeners, self.actions
        )
        self.closing = self.finishing.closing
        self.parked = self.finishing.parked
        self.tallies = self.finishing.tallies
        self.facts = FactCounts(counts, phases, self.pid_actor, self.pid_learnt)
        self.errors = self.facts.errors
        self.error_owner = self.facts.error_owner
        self.app_events = self.facts.app_events
        self.accepts = self.facts.accepts
        self.accept_conn: dict[int, int | None] = {}  # position -> conn id
        self.app_conn: dict[int, int | None] = {}

    def _count(self, key: str, k: int = 1) -> None:
        self.n[key] = self.n.get(key, 0) + k

    # The newest time processed (correlate.py moves it between chunks).
    @property
    def now(self) -> int:
        return self.finishing.now

    @now.setter
    def now(self, value: int) -> None:
        self.finishing.now = value

    # Finished lives whose rows may still be pending (correlate.py forgets them).
    @property
    def finished(self) -> list[Conn]:
        return self.finishing.finished

    @finished.setter
    def finished(self, value: list[Conn]) -> None:
        self.finishing.finished = value

    def decide_finished(self) -> None:
        self.finishing.decide_finished()

    def peers_of_stuck(self) -> int:
        return self.finishing.peers_of_stuck()

    # ---- one chunk ------------------------------------------------------------

    def chunk(
        self,
        base: int,
        now: np.ndarray,
        prev_now: int,
        milestones: list[tuple[int, int, Conn]],
        acc: pl.DataFrame | None,
        app: list[tuple[int, dict[str, Any]]],
    ) -> None:
        """The chunk's owner facts joined to their lives (correlator/lookups.py),
        then applied to them in position order with the lives' finishing."""
        n = len(now)
        before = np.empty(n + 1, np.int64)
        before[0] = prev_now
        before[1:] = now
        facts = app_frame(app)
        self.facts.app(facts)
        self.facts.learn_pids(facts)
        acc = accept_frame(acc)
        self.facts.accept(acc)

        # Lives: opened, learnt and closed here; when each leaves the indexes.
        for pos, kind, c in milestones:
            if kind == OPEN:
                self.conns[c.id] = c
            elif kind == CLOSE or kind == LOST:
                ix = pos - base
                key = int(now[ix]) if kind == CLOSE else int(before[ix])
                self.closing[c.id] = (key, pos, c)
        idx = self.index.learn(milestones)
        self._first_accept(facts, acc)
        raw, _ = unindex_at(self.closing, self.parked, before, base, self.grace)
        find_peers(milestones, idx, raw, self.conns, self.kept)
        settle, unindex = unindex_at(self.closing, self.parked, before, base, self.grace)
        facts, acc = self.index.resolve(facts, acc, unindex)
        self._apply(base, before, milestones, acc, facts, settle, unindex)

    def _apply(
        self,
        base: int,
        before: np.ndarray,
        milestones: list[tuple[int, int, Conn]],
        acc: pl.DataFrame,
        facts: pl.DataFrame,
        settle: dict[int, int],
        unindex: dict[int, int],
    ) -> None:
        """What the facts and milestones do to their lives, each life finished
        (its row taken) before the fact at its unindex: the facts by life,
        the milestones, listeners and rare records in position order."""
        conns = self.conns
        self.accept_conn.update(zip(acc["pos"].to_list(), acc["life"].to_list(), strict=True))
        found = facts.filter(pl.col("life").is_not_null())
        self.app_conn.update(zip(found["pos"].to_list(), found["life"].to_list(), strict=True))
        cov = found.filter(pl.col("event").is_in(list(APP_COVERAGE)))
        for event, k in cov.group_by("event").len().iter_rows():
            self._count(APP_COVERAGE[event][1], k)
        u = pl.DataFrame(
            {"life": list(unindex), "u": list(unindex.values())},
            schema={"life": pl.Int64, "u": pl.Int64},
        )
        # A fact after its life left the indexes (a stale fd) changes no row.
        late = pl.col("u").is_not_null() & (pl.col("u") <= pl.col("pos"))
        acts = found.filter(pl.col("pid").is_not_null()).join(u, on="life", how="left")
        accs = acc.filter(pl.col("life").is_not_null()).join(u, on="life", how="left")

        self._opened(milestones)
        # Listeners, milestones, listen and unmatched connect_failed records,
        # and the finishing, in position order; owner guesses are noted.
        self.guesses: list[tuple[int, int, str | None, int, None, str]] = []
        items: list[tuple[int, int, int, Any]] = [
            (2 * p, k, 0, c)
            for p, k, c in milestones
            if (c.role == "listener" and k in (OPEN, LEARN))
            or (k == CLOSE and c.role == "active" and c.last_old == "SYN_SENT")
        ]
        rare = facts.filter(
            (pl.col("event") == "listen")
            | ((pl.col("event") == "connect_failed") & pl.col("life").is_null())
        ).select(*_ROW)
        for row in rare.iter_rows():
            items.append((2 * row[0], 0, 2, row))
        for life, at in settle.items():
            items.append((2 * at - 1, self.closing[life][1], 3, life))
        items.sort(key=_first_two)
        self._listeners(items, settle)
        # Owner facts and what the records do, per life, before its finish.
        apply_owner_facts(
            acts.filter(~late),
            accs.filter(~late),
            milestones,
            conns,
            self.pid_actor,
            self.pid_learnt,
            self.listeners,
        )
        apply_flags(acts.filter(~late), conns, self.actions)
        for life in accs.filter(~late)["life"].to_list():
            conn = conns.get(life)
            if conn is not None:
                conn.accepted = True
        self.held.replay(acts, accs, unindex, conns)
        for key, k, what, item in items:
            if what == 0:
                if k == CLOSE:
                    failed_connects.add(self.failed, item)
            elif what == 2:
                if item[2] != "listen":
                    self._app(item)
            else:
                entry = self.closing.get(item)
                if entry is None:
                    continue
                at = (key + 1) >> 1
                self.now = int(before[at - base])
                self.finishing.settle(entry[2], at)
        for row in acts.filter(late).select(*_ROW).iter_rows():
            self._app(row)  # rare: only a stale (pid, fd) names a finished life
        for pos, pid, fd, life in accs.filter(late).select("pos", "pid", "fd", "life").iter_rows():
            conn = conns.get(life)
            if conn is not None:
                conn.accepted = True
                self.owners.set(conn, pos, self._actor_at(pid, pos), pid, fd, "accept4")

    def _actor_at(self, pid: int, pos: int) -> str | None:
        if self.pid_learnt.get(pid, NEVER) < pos:
            return self.pid_actor[pid]
        return None

    def _opened(self, milestones: list[tuple[int, int, Conn]]) -> None:
        """Lives and listeners opened, closes not seen."""
        opened = [c for _, k, c in milestones if k == OPEN]
        lost = sum(1 for _, k, _ in milestones if k == LOST)
        if lost:
            self._count("kernel.close_not_seen", lost)
        if not opened:
            return
        listener = np.fromiter((c.role == "listener" for c in opened), bool, len(opened))
        start = np.fromiter((c.start_ns for c in opened), np.int64, len(opened))
        for what, mine in (("connections", ~listener), ("listeners", listener)):
            k = int(mine.sum())
            if k:
                self._count(what, k)
                idx = self.phases.of_many(start[mine])
                for i, n in enumerate(np.bincount(idx[idx >= 0], minlength=0).tolist()):
                    if n:
                        self.phases.count_in(self.phases.names[i], what, n)

    def _listeners(self, items: list[Any], settle: dict[int, int]) -> None:
        """Listeners in position order: their on-CPU guess, their tuple, the
        listen records naming them (few: a server has one or two)."""
        for key, k, what, item in items:
            if what == 0 and item.role == "listener":
                conn, pos = item, key >> 1
                if k == OPEN:
                    cpu = conn.first_cpu_pid
                    # listen() moves a socket out of CLOSE in the caller's own
                    # process context, so there the on-CPU pid is the owner.
                    if conn.first_old == "CLOSE" and self.pid_learnt.get(cpu, NEVER) < pos:
                        self.owners.set(conn, pos, self.pid_actor[cpu], cpu, None, "cpu_pid")
                elif k == LEARN:
                    self.listeners.learnt(conn, pos, settle.get(conn.id))
            elif what == 2 and item[2] == "listen":
                self._app(item)

    def _app(self, row: tuple[Any, ...]) -> None:
        pos, ts, event, actor, pid, fd, error, life, laddr, lport, raddr, rport, has_tuple = row
        conn: Conn | None = None
        if event == "listen":
            if laddr is not None and lport:
                conn = self.listeners.at((laddr, lport), pos)
                life = conn.id if conn is not None else None
        elif life is None and event == "connect_failed" and pid is not None:
            dest = (raddr, rport) if raddr is not None and rport else None
            conn = failed_connects.match(self.failed, pid, dest)
            life = conn.id if conn is not None else None
        elif life is not None:
            conn = self.conns.get(life)
        if life is not None:
            self.app_conn[pos] = life
            keys = APP_COVERAGE.get(event)
            if keys is not None:
                self._count(keys[1])
        if conn is None or pid is None:
            return
        self.actions.note(conn.id, ts, event)
        if event in SOCKET_ACTIONS or conn.owner_pid is None:
            self.owners.set(conn, pos, actor, pid, fd, f"app:{event}")
        if event == "accept":
            conn.accepted = True
        if error and event == "connect_failed":
            conn.error = str(error)
        if event == "peer_close":
            conn.fin_read = True
        if fd is not None:
            if event in ("connect", "accept"):
                self.held.own(pid, conn)
            elif event == "close":
                conn.app_closed = True
                self.held.release(conn)

    def _first_accept(self, facts: pl.DataFrame, acc: pl.DataFrame) -> None:
        if self.finishing.first_accept is not None:
            return
        at = [int(p) for p in (acc["pos"].min(),) if p is not None]  # type: ignore[arg-type]
        acc_recs = facts.filter(pl.col("event") == "accept")["pos"]
        if len(acc_recs):
            at.append(int(acc_recs.min()))  # type: ignore[arg-type]
        if at:
            self.finishing.first_accept = min(at)

    def end(self, still_open: list[Conn]) -> None:
        """Flush the grace queue, then finish the lives still open."""
        self.finishing.end(still_open)
        self.index = Index()  # every life has left the indexes now


_ROW = (
    "pos",
    "mono_ns",
    "event",
    "actor",
    "pid",
    "fd",
    "error",
    "life",
    "laddr",
    "lport",
    "raddr",
    "rport",
    "has_tuple",
)


def _first_two(x: tuple[Any, ...]) -> tuple[Any, Any]:
    return x[0], x[1]
