"""Finishing lives once their grace ran out: their rows and outcomes at the chunk's end.

A closed life is settled at its unindex (correlator/closing.py): an orphaned
closer whose peer is still open is parked and finishes with that peer, any
other finishes then. A finished life is released by its process, leaves the
failed connects and its listener's place; its row waits (LifeRows) until
decide_finished at the chunk's end decides the outcomes
(correlator/outcome_rules.py) and emits the rows.
"""

from __future__ import annotations

from collections.abc import Callable

import polars as pl

from correlator import failed_connects
from correlator.actions import Actions
from correlator.held_sockets import HeldSockets
from correlator.kept import Kept
from correlator.lifecycle_rows import LifeRows
from correlator.lifecycles import Conn
from correlator.lookups import NEVER
from correlator.outcome_rules import Tallies, decide
from correlator.owners import Listeners
from correlator.phases import Phases


class Finishing:
    def __init__(
        self,
        counts: dict[str, int],
        phases: Phases,
        emit: Callable[[pl.DataFrame], None],
        t0: int,
        kept: Kept,
        held: HeldSockets,
        failed: failed_connects.Failed,
        listeners: Listeners,
        actions: Actions,
    ) -> None:
        self.n = counts
        self.phases = phases
        self.emit = emit
        self.t0 = t0
        self.kept = kept
        self.held = held
        self.failed = failed
        self.listeners = listeners
        self.first_accept: int | None = None  # position of the first accept seen
        # Closed lives wait here for the grace: id -> (key, close position, conn),
        # key = the event time the grace counts from; parked ones for their peer.
        self.closing: dict[int, tuple[int, int, Conn]] = {}
        self.parked: dict[int, Conn] = {}
        self.now = 0  # newest time processed
        # Finished lives whose rows may still be pending (correlate.py forgets them).
        self.finished: list[Conn] = []
        # Finished connections wait for their outcome until the chunk's end.
        self.actions = actions
        self.ending = LifeRows(actions)
        self.tallies = Tallies()

    def settle(self, conn: Conn, u: int) -> None:
        self.closing.pop(conn.id, None)
        peer = conn.peer_wait
        if peer is not None and not peer.ended:
            conn.parked = True  # finished with its peer (see Conn)
            self.parked[conn.id] = conn
            self.n["parked_closers"] = self.n.get("parked_closers", 0) + 1
            return
        self.finish(conn, at_end=False, at=u)

    def finish(self, conn: Conn, at_end: bool, at: int) -> None:
        """Out of the indexes now (before the fact at position `at`); its row
        and outcome at the chunk's end (decide_finished), from what it is now."""
        conn.ended = True
        self.parked.pop(conn.id, None)
        self.finished.append(conn)
        self._unindex(conn)
        if conn.role == "listener":
            conn.outcome = "open_at_end" if at_end else "closed"
            self.listeners.finished(conn, at)
        seen = self.first_accept is not None and self.first_accept < at
        self.ending.add(conn, at_end, self.now, seen)
        twin = conn.twin
        if twin is not None and twin.parked:
            twin.parked = False
            self.finish(twin, at_end=False, at=at)
        conn.twin = None

    def decide_finished(self) -> None:
        """The outcomes of the connections finished since the last call; their rows out."""
        ending, self.ending = self.ending, LifeRows(self.actions)
        if not len(ending):
            return
        table = ending.table(self.t0, self.phases)
        f = decide(table, ending.conns, self.tallies, self.phases, self.n)
        self.emit(ending.frame(f, self.kept.states(ending.ends)))

    def _unindex(self, conn: Conn) -> None:
        self.held.release(conn)
        if conn.role == "active" and conn.last_old == "SYN_SENT" and conn.close_seen:
            failed_connects.forget(self.failed, conn)

    def end(self, still_open: list[Conn]) -> None:
        """Settle the lives still in their grace, then finish those still open."""
        for _, _, c in sorted(self.closing.values(), key=lambda e: e[1]):
            self.settle(c, NEVER)
        for c in sorted(still_open, key=lambda c: c.start_ns):
            self.finish(c, at_end=True, at=NEVER)
        self.decide_finished()

    def peers_of_stuck(self) -> int:
        # Peers of leaked sockets: a stuck FIN_WAIT2 facing a stuck CLOSE_WAIT.
        return len(self.tallies.stuck_cw & self.tallies.stuck_fw2)
