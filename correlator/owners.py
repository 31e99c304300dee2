"""Who owns each life: its owner facts in position order.

The first real owner fact (an accept4 call, an actor's record naming the
socket) wins; later ones only fill the actor or fd; a guess (the on-CPU pid
of connect()/listen(), the listener's owner for a child in its queue) gives
way to a real fact. A record that is no socket action counts only when it
is a life's first fact. Listeners are few: they are kept by (address, port)
in the order they were learnt, for the children and the listen records.
"""

from __future__ import annotations

import bisect
from typing import Any

import polars as pl

from correlator.lifecycles import LEARN, OPEN, Conn
from correlator.lookups import NEVER

_GUESSES = ("cpu_pid", "listener")
SOCKET_ACTIONS = {"listen", "connect", "accept", "connect_failed", "accept_failed"}


def set_owner(conn: Conn, pos: int, actor: str | None, pid: int, fd: int | None, via: str) -> None:
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


class Listeners:
    def __init__(self) -> None:
        # (address, port) -> [learnt at, listener, finished at], in order.
        self.hist: dict[tuple[str, int], list[list[Any]]] = {}

    def learnt(self, conn: Conn, pos: int, gone: int | None) -> None:
        t = conn.learn
        assert t is not None
        self.hist.setdefault((t[0], t[1]), []).append([pos, conn, gone])

    def finished(self, conn: Conn, at: int) -> None:
        t = conn.learn
        for entry in self.hist.get((t[0], t[1]), []) if t else ():
            if entry[1] is conn and entry[2] is None:
                entry[2] = at

    def at(self, key: tuple[str, int], pos: int) -> Conn | None:
        """The listener on `key` at `pos`: the last one with it, if not finished."""
        hist = self.hist.get(key)
        if not hist:
            return None
        i = bisect.bisect_left(hist, [pos]) - 1
        if i < 0:
            return None
        _, lst, gone = hist[i]
        return None if gone is not None and gone <= pos else lst  # type: ignore[no-any-return]

    def owner_at(self, t: Any, pos: int) -> tuple[str | None, int] | None:
        """The owner (actor, pid) at `pos` of the listener a child at `t` waits on."""
        lst = self.at((t[0], t[1]), pos) or self.at(("0.0.0.0", t[1]), pos)
        if lst is None:
            return None
        owner = [h for h in lst.owner_hist if h[0] < pos]
        if not owner or owner[-1][2] is None:
            return None
        return owner[-1][1], owner[-1][2]


def apply_owner_facts(
    acts: pl.DataFrame,
    accs: pl.DataFrame,
    milestones: list[tuple[int, int, Conn]],
    conns: dict[int, Conn],
    pid_actor: dict[int, str],
    pid_learnt: dict[int, int],
    listeners: Listeners,
) -> None:
    """Each life's owner facts in position order (set_owner): the on-CPU
    and listener guesses, accept4 calls, records naming it."""
    known = pl.DataFrame(
        {"pid": list(pid_learnt), "learnt": list(pid_learnt.values())},
        schema={"pid": pl.Int64, "learnt": pl.Int64},
    )
    names = pid_actor
    a = accs.join(known, on="pid", how="left").select(
        "life",
        key=pl.col("pos") * 2,
        known=pl.col("learnt") < pl.col("pos"),
        pid="pid",
        fd="fd",
        via=pl.lit("accept4"),
        cond=pl.lit(False),
    )
    # A record that is no socket action counts only as a life's first fact.
    first = (
        pl.concat([accs.select("life", "pos"), acts.select("life", "pos")])
        .group_by("life")
        .agg(first=pl.col("pos").min())
    )
    socket = pl.col("event").is_in(list(SOCKET_ACTIONS))
    r = (
        acts.join(first, on="life", how="left")
        .filter(socket | (pl.col("pos") == pl.col("first")))
        .select(
            "life",
            key=pl.col("pos") * 2,
            actor="actor",
            pid="pid",
            fd="fd",
            via=pl.lit("app:") + pl.col("event"),
            cond=~socket,
        )
    )
    rows: list[tuple[int, int, str | None, int, int | None, str, bool]] = [
        (life, key, names[pid] if ok else None, pid, fd, via, cond)
        for life, key, ok, pid, fd, via, cond in a.iter_rows()
    ]
    rows.extend(r.iter_rows())
    # The guesses at OPEN (on-CPU pid) and LEARN (the listener's owner).
    learnt = pid_learnt
    for pos, k, c in milestones:
        if c.role == "listener":
            continue
        key = 2 * pos
        if k == OPEN:
            cpu = c.first_cpu_pid
            if c.first_old == "CLOSE" and learnt.get(cpu, NEVER) < pos:
                rows.append((c.id, key, names[cpu], cpu, None, "cpu_pid", False))
        elif k == LEARN and c.role == "passive":
            lst = listeners.owner_at(c.learn, pos)
            if lst is not None:
                rows.append((c.id, key, lst[0], lst[1], None, "listener", False))
    rows.sort(key=first_two)
    for life, key, actor, pid, fd, via, cond in rows:
        conn = conns.get(life)
        if conn is None or (cond and conn.owner_pid is not None):
            continue
        set_owner(conn, key >> 1, actor, pid, fd, via)


def first_two(x: tuple[Any, ...]) -> tuple[Any, Any]:
    return x[0], x[1]
