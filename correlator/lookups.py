"""Which life each owner fact of a chunk names, by joins instead of a fold.

A fact (an actor's record, an accept4 call) names a life by its 4-tuple
(the newest life indexed with it at the fact's position that had started by
its time, else the oldest), by the peer an accept4 call returns (the child
of that peer waiting in the queue: the last one indexed with it, unless a
claim took it since) or by (pid, fd) (the last socket claimed on it, unless
released since). A life is indexed from the position its tuple was learnt
to the position it was finished (`unindex`, known once its grace ran out).
The state that outlives a chunk is carried as frames: the indexed lives,
the children not yet accepted, the (pid, fd) claims still held.
"""

from __future__ import annotations

import polars as pl

from correlator.lifecycles import LEARN, Conn

TUPLE = ["laddr", "lport", "raddr", "rport"]
# A position no item reaches: "not yet" for when a pid was learnt or a life left.
NEVER = 1 << 62

IDX_SCHEMA = {
    "life": pl.Int64,
    "laddr": pl.String,
    "lport": pl.Int64,
    "raddr": pl.String,
    "rport": pl.Int64,
    "learn_pos": pl.Int64,
    "start_ns": pl.Int64,
    "passive": pl.Boolean,
    "unindex": pl.Int64,  # position the life left the indexes at (null: not yet)
}
CLAIM_SCHEMA = {"pid": pl.Int64, "fd": pl.Int64, "at": pl.Int64, "life": pl.Int64}
SET_SCHEMA = {"raddr": pl.String, "rport": pl.Int64, "at": pl.Int64, "life": pl.Int64}
# Positions doubled: a fact at p is at 2p; a life leaving the indexes before
# the fact at u handled (the grace ran out) is at 2u - 1.


def by_tuple(facts: pl.DataFrame, idx: pl.DataFrame) -> pl.DataFrame:
    """(pos, life) for the facts (pos, ts and the tuple) whose tuple has an
    indexed life at their position."""
    cand = facts.join(idx, on=TUPLE, how="inner").filter(
        (pl.col("learn_pos") < pl.col("pos"))
        & (pl.col("unindex").is_null() | (pl.col("unindex") > pl.col("pos")))
    )
    if not len(cand):
        return pl.DataFrame(schema={"pos": pl.Int64, "life": pl.Int64})
    started = pl.col("start_ns") <= pl.col("ts")
    return (
        cand.sort("pos", "learn_pos")
        .group_by("pos", maintain_order=True)
        .agg(
            newest=pl.col("life").filter(started).last(),
            oldest=pl.col("life").first(),
        )
        .select("pos", life=pl.coalesce("newest", "oldest"))
    )


def _last_before(q: pl.DataFrame, right: pl.DataFrame, at: str, by: list[str]) -> pl.DataFrame:
    """`q` with the last row of `right` (sorted by its `at` column) on the same
    `by` keys strictly before each query's `at`."""
    return q.join_asof(
        right,
        left_on="at",
        right_on=at,
        by=by,
        strategy="backward",
        allow_exact_matches=False,
        check_sortedness=False,
    )


def by_peer(
    calls: pl.DataFrame, sets: pl.DataFrame, pops: pl.DataFrame, unindex: pl.DataFrame
) -> pl.DataFrame:
    """(pos, life) for accept4 calls (pos, raddr, rport): the last child set
    on that peer before the call, unless a pop on the peer (`pops`: raddr,
    rport, at) came between or the child left the indexes by then."""
    if not len(calls):
        return pl.DataFrame(schema={"pos": pl.Int64, "life": pl.Int64})
    q = calls.select("pos", "raddr", "rport", at=pl.col("pos") * 2).sort("at")
    q = _last_before(q, sets.sort("at").rename({"at": "set_at"}), "set_at", ["raddr", "rport"])
    q = _last_before(q, pops.sort("at").rename({"at": "pop_at"}), "pop_at", ["raddr", "rport"])
    q = q.join(unindex, on="life", how="left")
    gone = (pl.col("pop_at") > pl.col("set_at")) | (pl.col("unindex") * 2 - 1 < pl.col("at"))
    return q.select("pos", life=pl.when(~gone.fill_null(False)).then(pl.col("life")))


def by_pidfd(queries: pl.DataFrame, claims: pl.DataFrame, releases: pl.DataFrame) -> pl.DataFrame:
    """(pos, life) for queries (pos, pid, fd): the last claim on (pid, fd)
    before the query, unless a release came between (`releases`: pid, fd, at,
    life; a null life releases whatever the fd holds)."""
    if not len(queries):
        return pl.DataFrame(schema={"pos": pl.Int64, "life": pl.Int64})
    q = queries.select("pos", "pid", "fd", at=pl.col("pos") * 2).sort("at")
    q = _last_before(q, claims.sort("at").rename({"at": "claim_at"}), "claim_at", ["pid", "fd"])
    rel = releases.sort("at")
    any_rel = rel.filter(pl.col("life").is_null()).select("pid", "fd", any_at="at")
    q = _last_before(q, any_rel, "any_at", ["pid", "fd"])
    own_rel = rel.filter(pl.col("life").is_not_null()).rename({"at": "own_at"})
    q = _last_before(q, own_rel, "own_at", ["pid", "fd", "life"])
    gone = (pl.col("any_at") > pl.col("claim_at")) | (pl.col("own_at") > pl.col("claim_at"))
    return q.select("pos", life=pl.when(~gone.fill_null(False)).then(pl.col("life")))


def held(claims: pl.DataFrame, releases: pl.DataFrame) -> pl.DataFrame:
    """The claims still held: the last per (pid, fd), unless released after it."""
    if not len(claims):
        return claims
    last = claims.sort("at").group_by("pid", "fd").agg(pl.all().last())
    rel = releases.group_by("pid", "fd", "life").agg(pl.col("at").max())
    any_rel = rel.filter(pl.col("life").is_null()).select("pid", "fd", any_at="at")
    own = rel.filter(pl.col("life").is_not_null()).rename({"at": "own_at"})
    q = last.join(any_rel, on=["pid", "fd"], how="left").join(
        own, on=["pid", "fd", "life"], how="left"
    )
    gone = (pl.col("any_at") > pl.col("at")) | (pl.col("own_at") > pl.col("at"))
    return q.filter(~gone.fill_null(False)).select(list(CLAIM_SCHEMA))


def waiting(sets: pl.DataFrame, pops: pl.DataFrame, unindex: pl.DataFrame) -> pl.DataFrame:
    """The children still waiting: the last set per peer, unless a pop on the
    peer came after it or it left the indexes."""
    if not len(sets):
        return sets
    last = sets.sort("at").group_by("raddr", "rport").agg(pl.all().last())
    popped = pops.group_by("raddr", "rport").agg(pop_at=pl.col("at").max())
    q = last.join(popped, on=["raddr", "rport"], how="left").join(unindex, on="life", how="left")
    gone = (pl.col("pop_at") > pl.col("at")) | pl.col("unindex").is_not_null()
    return q.filter(~gone.fill_null(False)).select(list(SET_SCHEMA))


class Index:
    """The lives a fact can name, carried from chunk to chunk as frames: the
    lives indexed by tuple, the children waiting for accept4, the (pid, fd)
    claims held."""

    def __init__(self) -> None:
        self.idx = pl.DataFrame(schema=IDX_SCHEMA)
        self.sets = pl.DataFrame(schema=SET_SCHEMA)
        self.claims = pl.DataFrame(schema=CLAIM_SCHEMA)
        self.new_sets = self.sets

    def learn(self, milestones: list[tuple[int, int, Conn]]) -> pl.DataFrame:
        """The lives whose tuple this chunk told, indexed from then on;
        returns every indexed life (their `unindex` not yet known)."""
        told = [
            (pos, c, c.learn)
            for pos, kind, c in milestones
            if kind == LEARN and c.learn is not None and c.role != "listener"
        ]
        lives = [c for _, c, _ in told]
        tup = [t for _, _, t in told if t is not None]
        learnt = pl.DataFrame(
            {
                "life": [c.id for c in lives],
                "laddr": [t[0] for t in tup],
                "lport": [t[1] for t in tup],
                "raddr": [t[2] for t in tup],
                "rport": [t[3] for t in tup],
                "learn_pos": [p for p, _, _ in told],
                "start_ns": [c.start_ns for c in lives],
                "passive": [c.role == "passive" for c in lives],
                "unindex": None,
            },
            schema=IDX_SCHEMA,
        )
        sets = learnt.filter("passive").select(
            "raddr", "rport", at=pl.col("learn_pos") * 2, life="life"
        )
        self.idx = pl.concat([self.idx, learnt])
        self.new_sets = pl.concat([self.sets, sets])
        return self.idx

    def resolve(
        self, facts: pl.DataFrame, acc: pl.DataFrame, unindex: dict[int, int]
    ) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Each record's and accept4 call's life (a `life` column); `unindex`:
        the lives leaving the indexes in this chunk, at which position."""
        u = pl.DataFrame(
            {"life": list(unindex), "unindex": list(unindex.values())},
            schema={"life": pl.Int64, "unindex": pl.Int64},
        )
        idx = (
            self.idx.join(u.rename({"unindex": "u"}), on="life", how="left", maintain_order="left")
            .with_columns(unindex=pl.coalesce("unindex", "u"))
            .drop("u")
        )
        tup = facts.filter(pl.col("has_tuple") & (pl.col("event") != "listen"))
        found = by_tuple(tup.select("pos", *TUPLE, ts="mono_ns"), idx)
        facts = facts.join(found, on="pos", how="left", maintain_order="left")
        facts = facts.join(
            idx.select("life", l_raddr="raddr", l_rport="rport"),
            on="life",
            how="left",
            maintain_order="left",
        )
        int_pid = pl.col("pid").is_not_null()
        # accept4 takes the child of its peer; an actor's accept record does too.
        calls = acc.filter(pl.col("ok") & (pl.col("peer_port") != 0))
        pops = pl.concat(
            [
                calls.select(raddr="peer_addr", rport="peer_port", at=pl.col("pos") * 2),
                facts.filter(
                    (pl.col("event") == "accept") & pl.col("life").is_not_null() & int_pid
                ).select(raddr="l_raddr", rport="l_rport", at=pl.col("pos") * 2),
            ]
        )
        peer_found = by_peer(
            calls.select("pos", raddr="peer_addr", rport="peer_port"), self.new_sets, pops, u
        )
        acc = acc.join(peer_found, on="pos", how="left", maintain_order="left")
        # (pid, fd): claimed by accept4 and connect/accept records, released by
        # close records and by the life leaving the indexes.
        has_fd = pl.col("fd").is_not_null() & int_pid
        at = pl.col("pos") * 2
        claim_rows = pl.concat(
            [
                acc.filter(pl.col("life").is_not_null()).select("pid", "fd", at=at, life="life"),
                facts.filter(
                    pl.col("event").is_in(["connect", "accept"])
                    & pl.col("life").is_not_null()
                    & has_fd
                ).select("pid", "fd", at=at, life="life"),
            ]
        ).cast(CLAIM_SCHEMA)  # type: ignore[arg-type]
        claims = pl.concat([self.claims, claim_rows])
        to_fd = (
            pl.col("life").is_null()
            & (pl.col("event") != "listen")
            & ~((pl.col("event") == "connect_failed") & int_pid)
            & has_fd
            & ~pl.col("event").is_in(["connect", "accept"])
        )
        facts = facts.with_columns(to_fd=to_fd)
        closes = pl.col("event") == "close"
        releases = pl.concat(
            [
                facts.filter(to_fd & closes).select(
                    "pid", "fd", at=at, life=pl.lit(None, pl.Int64)
                ),
                facts.filter(closes & pl.col("life").is_not_null() & has_fd).select(
                    "pid", "fd", at=at, life="life"
                ),
                claims.join(u, on="life", how="inner").select(
                    "pid", "fd", at=pl.col("unindex") * 2 - 1, life="life"
                ),
            ]
        ).cast(CLAIM_SCHEMA)  # type: ignore[arg-type]
        queries = pl.concat(
            [
                acc.filter(pl.col("ok") & pl.col("life").is_null()).select("pos", "pid", "fd"),
                facts.filter(to_fd).select("pos", "pid", "fd"),
            ]
        )
        fd_found = by_pidfd(queries, claims, releases).rename({"life": "fd_life"})
        acc = acc.join(fd_found, on="pos", how="left", maintain_order="left").with_columns(
            life=pl.coalesce("life", "fd_life")
        )
        facts = facts.join(fd_found, on="pos", how="left", maintain_order="left").with_columns(
            life=pl.coalesce("life", "fd_life")
        )
        # Carried: what is still indexed, waiting and held.
        self.idx = idx.filter(pl.col("unindex").is_null())
        self.sets = waiting(self.new_sets, pops, u)
        self.claims = held(claims, releases)
        return facts, acc
