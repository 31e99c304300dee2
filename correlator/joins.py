"""Owners: who holds each connection, from the facts that name it, in time order.

The kernel's tcp_state events carry whoever was on the CPU, not the owner.
Owner facts come from accept4 (pid, fd, peer), the actors' records (4-tuple,
or (pid, fd)) and two guesses: the on-CPU pid of connect()/listen() (which
run in the caller's context) and the listener's owner for a child still in
the accept queue. A fact joins its connection by the 4-tuple (the newest
life that had it at that time) or by (pid, fd) (the last socket that fd
named); the first real fact wins, later ones fill gaps, a guess gives way.

This is the one fold over time: lives' milestones (open, tuple known,
close, finished), accept4 calls and app records, which are a few per
connection; the transitions, epoll calls and rows are handled as columns.
Finished connections stay joinable for `grace_ns` of event time, so late
owner facts still reach them, then their outcome is decided.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import polars as pl

from correlator.kept import Kept
from correlator.lifecycle_rows import LifeRows
from correlator.lifecycles import CLOSE, LEARN, LOST, OPEN, Conn, Tuple4, norm_addr
from correlator.outcome_rules import Tallies, decide
from correlator.outcomes import errno_name
from correlator.phases import Phases

MAX_ACTIONS = 16
_GUESSES = ("cpu_pid", "listener")
_SOCKET_ACTIONS = {"listen", "connect", "accept", "connect_failed", "accept_failed"}
_APP_COVERAGE = {
    e: (f"coverage.app_{e}", f"coverage.app_{e}_matched")
    for e in ("connect", "accept", "connect_failed")
}


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
        self.emit = emit
        self.grace = grace_ns
        self.t0 = t0
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
        self.listeners: dict[tuple[str, int], Conn] = {}
        self.by_tuple: dict[Tuple4, list[Conn]] = {}
        self.by_pidfd: dict[tuple[int, int], Conn] = {}
        self.unaccepted: dict[tuple[str, int], Conn] = {}
        # Failed connects by the pid that called connect(): their CLOSE->SYN_SENT
        # runs in that process's context, so first_cpu_pid is the caller.
        self.failed: dict[int, deque[Conn]] = {}
        # Finished lives wait here for the grace: (key, conn), key = event time
        # when it was queued (items settle in arrival order of the queue).
        self.finishing: deque[tuple[int, Conn]] = deque()
        self.now = 0  # newest time processed
        self.open: dict[int, Conn] = {}  # id -> live connection (for the end)
        # Finished lives whose rows may still be pending (correlate.py forgets them).
        self.finished: list[Conn] = []

        # Finished connections wait for their outcome until the chunk's end.
        self.ending = LifeRows()
        self.tallies = Tallies()
        self.errors: dict[str, int] = {}
        self.error_owner: dict[tuple[str, str, str, int], int] = {}
        self.app_events: dict[str, int] = {}
        self.accepts: dict[int, dict[str, int]] = {}
        self.conns_by_owner: dict[int, int] = {}
        self.conns_by_owner_max: dict[int, int] = {}
        self.accept_conn: dict[int, int | None] = {}  # position -> conn id
        self.app_conn: dict[int, int | None] = {}

    def _count(self, key: str, k: int = 1) -> None:
        self.n[key] = self.n.get(key, 0) + k

    # ---- the fold -------------------------------------------------------------

    def settle(self, until: int) -> None:
        q = self.finishing
        while q and q[0][0] <= until:
            _, conn = q.popleft()
            peer = conn.peer_wait
            if peer is not None and not peer.ended:
                conn.parked = True  # finished with its peer (see Conn)
                self._count("parked_closers")
                continue
            self.finish(conn, at_end=False)

    def milestone(self, pos: int, kind: int, conn: Conn, now_before: int, now: int) -> None:
        if kind == OPEN:
            self.open[conn.id] = conn
            cpu = conn.first_cpu_pid
            # connect() and listen() move a socket out of CLOSE in the caller's
            # own process context, so there the on-CPU pid is the owner.
            if conn.first_old == "CLOSE" and cpu in self.pid_actor:
                self.set_owner(conn, pos, self.pid_actor[cpu], cpu, None, "cpu_pid")
            what = "connections" if conn.role != "listener" else "listeners"
            self._count(what)
            self.phases.count(conn.start_ns, what)
        elif kind == LEARN:
            self._learn(conn, pos)
        elif kind == CLOSE:
            self.open.pop(conn.id, None)
            if conn.last_old == "FIN_WAIT2" and conn.addr4 is not None:
                t = conn.addr4
                for peer in reversed(self.by_tuple.get((t[2], t[3], t[0], t[1]), [])):
                    if not peer.ended_before(pos) and self.kept.state_at(peer, pos) == "CLOSE_WAIT":
                        conn.peer_wait, peer.twin = peer, conn
                        break
            if conn.role == "active" and conn.last_old == "SYN_SENT":
                # A failed connect may never get a source port, so its tuple
                # cannot find it: index it by the process that dialled.
                self.failed.setdefault(conn.first_cpu_pid, deque()).append(conn)
            self.finishing.append((now, conn))
        elif kind == LOST:
            self.open.pop(conn.id, None)
            self._count("kernel.close_not_seen")
            self.finishing.append((now_before, conn))

    def _learn(self, conn: Conn, pos: int) -> None:
        t = conn.learn
        assert t is not None
        conn.addr4 = t
        if conn.role == "listener":
            self.listeners[(t[0], t[1])] = conn
            return
        self.by_tuple.setdefault(t, []).append(conn)
        if conn.role == "passive":
            self.unaccepted[(t[2], t[3])] = conn
            # Until accept4 hands it out, the child sits in the listener's queue.
            lst = self.listeners.get((t[0], t[1])) or self.listeners.get(("0.0.0.0", t[1]))
            if lst is not None and lst.owner_pid is not None:
                self.set_owner(conn, pos, lst.owner_actor, lst.owner_pid, None, "listener")

    def set_owner(
        self, conn: Conn, pos: int, actor: str | None, pid: int, fd: int | None, via: str
    ) -> None:
        # The first real owner fact wins; later ones only fill gaps. A guess
        # (the on-CPU pid, the listener's owner) gives way to a real fact.
        before = (conn.owner_actor, conn.owner_pid, conn.owner_fd, conn.owner_via)
        if conn.owner_pid is None or (conn.owner_via in _GUESSES and via not in _GUESSES):
            if conn.owner_pid != pid:
                conn.owner_actor = conn.owner_fd = None
            conn.owner_pid, conn.owner_via = pid, via
        if conn.owner_pid == pid:
            conn.owner_actor = conn.owner_actor or actor
            if fd is not None and conn.owner_fd is None:
                conn.owner_fd = fd
        after = (conn.owner_actor, conn.owner_pid, conn.owner_fd, conn.owner_via)
        if after != before:
            conn.owner_hist.append((pos, *after))

    def accept(self, pos: int, ts: int, pid: int, fd: int, err: int, peer: Any, port: Any) -> None:
        self._count("kernel.accept")
        per = self.accepts.setdefault(pid, {})
        conn: Conn | None = None
        if fd >= 0 and not err:
            per["ok"] = per.get("ok", 0) + 1
            self.phases.count(ts, "accept.ok")
            key = (norm_addr(str(peer or "")), int(port or 0))
            conn = self.unaccepted.pop(key, None) if key[1] else None
            if conn is None:
                conn = self.by_pidfd.get((pid, fd))
            if conn is not None:
                conn.accepted = True
                self.set_owner(conn, pos, self.pid_actor.get(pid), pid, fd, "accept4")
                self._own_fd(pid, fd, conn)
            else:
                self._count("kernel.accept_unmatched")
        else:
            name = errno_name(err)
            per[name] = per.get(name, 0) + 1
            self.phases.count(ts, f"accept.{name}")
        self.accept_conn[pos] = conn.id if conn else None

    def app(self, pos: int, ts: int, rec: dict[str, Any]) -> None:
        n = self.n
        n["app.records"] = n.get("app.records", 0) + 1
        event = str(rec.get("event", ""))
        actor = rec.get("actor")
        pid = rec.get("pid")
        if isinstance(pid, int) and isinstance(actor, str) and pid not in self.pid_actor:
            self.pid_actor[pid] = actor
            self.pid_learnt[pid] = pos
        self.app_events[event] = self.app_events.get(event, 0) + 1
        fd = rec.get("fd") if isinstance(rec.get("fd"), int) else None
        error = rec.get("error") or (errno_name(rec["errno"]) if rec.get("errno") else None)
        if error:
            self.errors[error] = self.errors.get(error, 0) + 1
            key = (str(error), event, str(actor), int(pid) if isinstance(pid, int) else -1)
            self.error_owner[key] = self.error_owner.get(key, 0) + 1
            self.phases.count(ts, f"errors.{error}")
        conn = self._find_conn(pos, ts, event, rec, fd)
        if conn is not None and isinstance(pid, int):
            self._apply_app(conn, pos, ts, event, rec, pid, fd, error)
        keys = _APP_COVERAGE.get(event)
        if keys is not None:
            self._count(keys[0])
            if conn is not None:
                self._count(keys[1])
        self.app_conn[pos] = conn.id if conn else None

    def _find_conn(
        self, pos: int, ts: int, event: str, rec: dict[str, Any], fd: int | None
    ) -> Conn | None:
        laddr, lport = rec.get("laddr"), rec.get("lport")
        raddr, rport = rec.get("raddr"), rec.get("rport")
        pid = rec.get("pid")
        if event == "listen":
            if laddr is not None and lport:
                return self.listeners.get((norm_addr(str(laddr)), int(lport)))
            return None
        if lport and rport and laddr is not None and raddr is not None:
            t = (norm_addr(str(laddr)), int(lport), norm_addr(str(raddr)), int(rport))
            cands = self.by_tuple.get(t)
            if cands:
                # The newest incarnation that already existed at this time.
                for c in reversed(cands):
                    if c.start_ns <= ts:
                        return c
                return cands[0]
        if event == "connect_failed" and isinstance(pid, int):
            # The record follows its own failure at once; actors may log only
            # some failures, so match the newest one (to the same destination
            # when the record names it).
            q = self.failed.get(pid)
            dest = (norm_addr(str(raddr)), int(rport)) if raddr is not None and rport else None
            if q:
                for i in range(len(q) - 1, -1, -1):
                    c = q[i]
                    if dest is None or c.dest == dest:
                        del q[i]
                        return c
            return None
        if fd is not None and isinstance(pid, int) and event not in ("connect", "accept"):
            return self.by_pidfd.get((pid, fd))
        return None

    def _apply_app(
        self,
        conn: Conn,
        pos: int,
        ts: int,
        event: str,
        rec: dict[str, Any],
        pid: int,
        fd: int | None,
        error: str | None,
    ) -> None:
        actor = rec.get("actor") if isinstance(rec.get("actor"), str) else None
        if conn.actions is None:
            conn.actions = [(ts, event)]
        elif len(conn.actions) < MAX_ACTIONS:
            conn.actions.append((ts, event))
        else:
            past = conn.actions_past
            if past is None:
                past = conn.actions_past = {}
            past[event] = past.get(event, 0) + 1
        if event in _SOCKET_ACTIONS or conn.owner_pid is None:
            self.set_owner(conn, pos, actor, pid, fd, f"app:{event}")
        if event == "accept":
            conn.accepted = True
            if conn.addr4 is not None:
                self.unaccepted.pop((conn.addr4[2], conn.addr4[3]), None)
        if error and event == "connect_failed":
            conn.error = str(error)
        if fd is not None:
            if event in ("connect", "accept"):
                self._own_fd(pid, fd, conn)
            elif event == "close":
                conn.app_closed = True
                self._release(conn)
                if self.by_pidfd.get((pid, fd)) is conn:
                    # The fd number is free for the next socket now.
                    del self.by_pidfd[(pid, fd)]

    def _own_fd(self, pid: int, fd: int, conn: Conn) -> None:
        self.by_pidfd[(pid, fd)] = conn
        if conn.held_by is not None:
            return
        conn.held_by = pid
        self.conns_by_owner[pid] = self.conns_by_owner.get(pid, 0) + 1
        if self.conns_by_owner[pid] > self.conns_by_owner_max.get(pid, 0):
            self.conns_by_owner_max[pid] = self.conns_by_owner[pid]

    def _release(self, conn: Conn) -> None:
        if conn.held_by is not None:
            n = self.conns_by_owner.get(conn.held_by, 0)
            self.conns_by_owner[conn.held_by] = max(n - 1, 0)
            conn.held_by = None

    # ---- finishing --------------------------------------------------------------

    def finish(self, conn: Conn, at_end: bool) -> None:
        """Out of the indexes now; its row and outcome at the chunk's end
        (decide_finished), from what it is now."""
        phase = self.phases.of(conn.start_ns)
        conn.ended = True
        self.finished.append(conn)
        self._unindex(conn)
        if conn.role == "listener":
            conn.outcome = "open_at_end" if at_end else "closed"
            t = conn.addr4
            if t and self.listeners.get((t[0], t[1])) is conn:
                del self.listeners[(t[0], t[1])]
        seen = bool(self.n.get("kernel.accept", 0) or self.app_events.get("accept", 0))
        self.ending.add(conn, at_end, self.t0, self.now, phase, seen)
        twin = conn.twin
        if twin is not None and twin.parked:
            twin.parked = False
            self.finish(twin, at_end=False)
        conn.twin = None

    def decide_finished(self) -> None:
        """The outcomes of the connections finished since the last call; their rows out."""
        ending, self.ending = self.ending, LifeRows()
        if not len(ending):
            return
        f = decide(ending.table(), ending.conns, self.tallies, self.phases, self.n)
        self.emit(ending.frame(f, self.kept.states(ending.ends)))

    def _unindex(self, conn: Conn) -> None:
        t = conn.addr4
        if t is not None and conn.role != "listener":
            cands = self.by_tuple.get(t)
            if cands is not None:
                if conn in cands:
                    cands.remove(conn)
                if not cands:
                    del self.by_tuple[t]
            if self.unaccepted.get((t[2], t[3])) is conn:
                del self.unaccepted[(t[2], t[3])]
        if conn.owner_pid is not None and conn.owner_fd is not None:
            key = (conn.owner_pid, conn.owner_fd)
            if self.by_pidfd.get(key) is conn:
                del self.by_pidfd[key]
        self._release(conn)
        if conn.role == "active" and conn.last_old == "SYN_SENT" and conn.close_seen:
            q = self.failed.get(conn.first_cpu_pid)
            if q is not None:
                try:
                    q.remove(conn)
                except ValueError:
                    pass  # already matched to its log record
                if not q:
                    del self.failed[conn.first_cpu_pid]

    def end(self) -> None:
        """Flush the grace queue, then finish the lives still open."""
        self.settle(1 << 63)
        for c in sorted(self.open.values(), key=lambda c: c.start_ns):
            self.finish(c, at_end=True)
        self.open.clear()
        self.decide_finished()

    def peers_of_stuck(self) -> int:
        # Peers of leaked sockets: a stuck FIN_WAIT2 facing a stuck CLOSE_WAIT.
        return len(self.tallies.stuck_cw & self.tallies.stuck_fw2)
