"""Who owns each life: its owner facts in position order, folded by columns.

The first real owner fact (an accept4 call, an actor's record naming the
socket) wins; later ones only fill the actor or fd; a guess (the on-CPU pid
of connect()/listen(), the listener's owner for a child in its queue) gives
way to a real fact. A record that is no socket action counts only when it
is a life's first fact. Every change of a life's owner is a row of one
frame (`Owners.changes`), which rows.py joins as of. Listeners are few:
they are kept by (address, port) in the order they were learnt, for the
children and the listen records.
"""

from __future__ import annotations

import bisect
from typing import Any

import numpy as np
import polars as pl

from correlator.lifecycles import LEARN, OPEN, Conn, shared
from correlator.lookups import NEVER

_GUESSES = ("cpu_pid", "listener")
SOCKET_ACTIONS = {"listen", "connect", "accept", "connect_failed", "accept_failed"}

# (life, position, actor, pid, fd, via) each time a life's owner changed.
CHANGES = {
    "conn": pl.Int64,
    "hp": pl.Int64,
    "o_actor": pl.String,
    "o_pid": pl.Int64,
    "o_fd": pl.Int64,
    "o_via": pl.String,
}
_FACTS = {
    "life": pl.Int64,
    "key": pl.Int64,
    "actor": pl.String,
    "pid": pl.Int64,
    "fd": pl.Int64,
    "via": pl.String,
    "cond": pl.Boolean,
}
Change = tuple[int, int, str | None, int | None, int | None, str | None]


class Owners:
    """The owner changes of the lives not yet forgotten, as one frame; the
    listeners' also as tuples, as their children look them up one by one."""

    def __init__(self) -> None:
        self.changes = pl.DataFrame(schema=CHANGES)
        self.pending: list[Change] = []  # from the rare facts, not yet in `changes`
        self.of_listener: dict[int, list[Change]] = {}

    def set(
        self, conn: Conn, pos: int, actor: str | None, pid: int, fd: int | None, via: str
    ) -> None:
        """One fact, in position order (listeners and the rare records)."""
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
            change = (conn.id, pos, *after)
            self.pending.append(change)
            if conn.role == "listener":
                self.of_listener.setdefault(conn.id, []).append(change)

    def _flush(self) -> None:
        if self.pending:
            more = pl.DataFrame(self.pending, schema=CHANGES, orient="row")
            self.changes = pl.concat([self.changes, more])
            self.pending = []

    def of(self, ids: list[int]) -> pl.DataFrame:
        """Every owner change of these lives, by position."""
        self._flush()
        return self.changes.filter(pl.col("conn").is_in(ids)).sort("hp")

    def forget(self, ids: list[int]) -> None:
        if not ids:
            return
        self._flush()
        self.changes = self.changes.filter(~pl.col("conn").is_in(ids))
        for cid in ids:
            self.of_listener.pop(cid, None)

    def fold(self, facts: pl.DataFrame, conns: dict[int, Conn]) -> None:
        """Each life's facts (life, key = 2 * position, actor, pid, fd, via,
        cond: no socket action) folded in key order from the owner it has:
        its changes appended, its owner set."""
        lives = facts["life"].unique().to_list()
        live = [conns.get(life) for life in lives]
        known = [c for c in live if c is not None]
        held = [c for c in known if c.owner_pid is not None]
        # What each life has already, as its fact before all others.
        start = pl.DataFrame(
            {
                "life": [c.id for c in held],
                "key": [-1] * len(held),
                "actor": [c.owner_actor for c in held],
                "pid": [c.owner_pid for c in held],
                "fd": [c.owner_fd for c in held],
                "via": [c.owner_via for c in held],
                "cond": [False] * len(held),
            },
            schema=_FACTS,
        )
        facts = facts.filter(pl.col("life").is_in([c.id for c in known]))
        df = pl.concat([start, facts.cast(_FACTS)]).sort("life", "key", maintain_order=True)  # type: ignore[arg-type]
        out = _fold(df)
        if not len(out):
            return
        self._flush()
        self.changes = pl.concat([self.changes, out])
        last = out.unique("conn", keep="last", maintain_order=True)
        listeners = []
        # Names and pids are few: one shared object each (lifecycles.shared).
        cols = (shared(last[k].to_list()) for k in ("o_actor", "o_pid", "o_via"))
        rows = zip(last["conn"].to_list(), *cols, last["o_fd"].to_list(), strict=True)
        for cid, actor, pid, via, fd in rows:
            c = conns[cid]
            c.owner_actor, c.owner_pid, c.owner_fd, c.owner_via = actor, pid, fd, via
            if c.role == "listener":
                listeners.append(cid)
        if listeners:
            for change in out.filter(pl.col("conn").is_in(listeners)).iter_rows():
                self.of_listener.setdefault(change[0], []).append(change)  # type: ignore[arg-type]


def _fold(df: pl.DataFrame) -> pl.DataFrame:
    """The owner changes of facts sorted by (life, key), each life starting
    with no owner: numpy over the runs of each life (polars' windows over
    ~10^4 small groups cost ~50x more)."""
    life = df["life"].to_numpy()
    n = len(life)
    first = np.ones(n, bool)
    first[1:] = life[1:] != life[:-1]
    # A record that is no socket action counts only if nothing came before.
    keep = ~df["cond"].to_numpy() | first
    df = df.filter(pl.Series(keep))
    life, first = life[keep], first[keep]
    n = len(life)
    pid = df["pid"].to_numpy()
    fd = df["fd"].to_numpy(allow_copy=True)
    actor = df["actor"].to_numpy()
    via = df["via"].to_numpy()
    idx = np.arange(n)
    starts = idx[first]
    seg = np.cumsum(first) - 1
    # The owner's pid and via: the first fact's, then the first real fact's
    # if the first was a guess.
    real = ~np.isin(via, _GUESSES)
    real_n: np.ndarray = np.cumsum(real)
    real_rank = real_n - (real_n - real)[starts][seg]
    lead = first | (real & (real_rank == 1) & ~real[starts][seg])
    at = np.maximum.accumulate(np.where(lead, idx, 0))
    o_pid = pid[at]
    o_via = via[at]
    # Actor and fd: the first known among the facts of the owner's pid, kept
    # across a lead with the same pid.
    prev_pid = np.empty(n, pid.dtype)
    prev_pid[1:] = o_pid[:-1]
    new_pid = first | (lead & (pid != prev_pid))
    blk_starts = idx[new_pid]
    blk = np.cumsum(new_pid) - 1
    mine = pid == o_pid

    def first_known(values: np.ndarray, known: np.ndarray) -> np.ndarray:
        cand = np.where(mine & known, idx, n)
        at = np.minimum.reduceat(cand, blk_starts)[blk]
        out = np.full(n, None, dtype=object)
        ok = at <= idx
        out[ok] = values[at[ok]]
        return out

    fd_known = ~np.isnan(fd) if fd.dtype.kind == "f" else np.ones(n, bool)
    o_actor = first_known(actor, actor != None)  # noqa: E711 (elementwise)
    o_fd = first_known(fd, fd_known)
    changed = first.copy()
    for col in (o_actor, o_pid, o_fd, o_via):
        changed[1:] |= col[1:] != col[:-1]
    out = changed & (df["key"].to_numpy() >= 0)
    return pl.DataFrame(
        {
            "conn": life[out],
            "hp": df["key"].to_numpy()[out] // 2,
            "o_actor": o_actor[out].tolist(),
            "o_pid": o_pid[out],
            "o_fd": [None if v is None else int(v) for v in o_fd[out].tolist()],
            "o_via": o_via[out].tolist(),
        },
        schema=CHANGES,
    )


class Listeners:
    def __init__(self, owners: Owners) -> None:
        # (address, port) -> [learnt at, listener, finished at], in order.
        self.hist: dict[tuple[str, int], list[list[Any]]] = {}
        self.owners = owners

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
        owner = [h for h in self.owners.of_listener.get(lst.id, ()) if h[1] < pos]
        if not owner or owner[-1][3] is None:
            return None
        return owner[-1][2], owner[-1][3]


def apply_owner_facts(
    acts: pl.DataFrame,
    accs: pl.DataFrame,
    milestones: list[tuple[int, int, Conn]],
    conns: dict[int, Conn],
    pid_actor: dict[int, str],
    pid_learnt: dict[int, int],
    listeners: Listeners,
) -> None:
    """Each life's owner facts in position order (Owners.fold): the on-CPU
    and listener guesses, accept4 calls, records naming it."""
    known = pl.DataFrame(
        {"pid": list(pid_learnt), "learnt": list(pid_learnt.values())},
        schema={"pid": pl.Int64, "learnt": pl.Int64},
    )
    names = pl.DataFrame(
        {"pid": list(pid_actor), "name": list(pid_actor.values())},
        schema={"pid": pl.Int64, "name": pl.String},
    )
    a = (
        accs.join(known, on="pid", how="left")
        .join(names, on="pid", how="left")
        .select(
            "life",
            key=pl.col("pos") * 2,
            actor=pl.when(pl.col("learnt") < pl.col("pos")).then("name"),
            pid="pid",
            fd="fd",
            via=pl.lit("accept4"),
            cond=pl.lit(False),
        )
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
    # The guesses at OPEN (on-CPU pid) and LEARN (the listener's owner).
    learnt = pid_learnt
    guesses: list[tuple[int, int, str | None, int, None, str, bool]] = []
    for pos, k, c in milestones:
        if c.role == "listener":
            continue
        key = 2 * pos
        if k == OPEN:
            cpu = c.first_cpu_pid
            if c.first_old == "CLOSE" and learnt.get(cpu, NEVER) < pos:
                guesses.append((c.id, key, pid_actor[cpu], cpu, None, "cpu_pid", False))
        elif k == LEARN and c.role == "passive":
            lst = listeners.owner_at(c.learn, pos)
            if lst is not None:
                guesses.append((c.id, key, lst[0], lst[1], None, "listener", False))
    g = pl.DataFrame(guesses, schema=_FACTS, orient="row")
    facts = pl.concat([x.cast(_FACTS) for x in (a, r, g)])  # type: ignore[arg-type]
    if len(facts):
        listeners.owners.fold(facts, conns)
