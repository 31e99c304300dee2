"""When a closed life leaves the indexes, and the peer an orphaned closer waits on.

A life closed (or lost) at event time `key` stays joinable for the grace:
it leaves the indexes before the first item handled once the newest time
before it is `key + grace` or more (a searchsorted on the chunk's times).
An orphaned closer (->CLOSE from FIN_WAIT2) whose peer is still in
CLOSE_WAIT is parked until that peer finishes, and leaves with it.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from correlator.kept import Kept
from correlator.lifecycles import CLOSE, Conn
from correlator.lookups import TUPLE


def unindex_at(
    closing: dict[int, tuple[int, int, Conn]],
    parked: dict[int, Conn],
    before: np.ndarray,
    base: int,
    grace: int,
) -> tuple[dict[int, int], dict[int, int]]:
    """For the lives closed and not yet finished: the position whose handling
    their grace runs out before (`settle`), and the one they leave the
    indexes at (`unindex`: a closer parked on its peer with the peer)."""
    if not closing:
        return {}, {}
    lives = list(closing)
    keys = np.fromiter((closing[c][0] for c in lives), np.int64, len(lives))
    ix = np.searchsorted(before, keys + grace, side="left")
    n = len(before) - 1
    settle = {life: base + i for life, i in zip(lives, ix.tolist(), strict=True) if i <= n}
    unindex: dict[int, int] = {}
    for life, u in settle.items():
        conn = closing[life][2]
        peer = conn.peer_wait
        if peer is None or peer.ended:
            unindex[life] = u
            continue
        up = settle.get(peer.id)
        if up is not None:
            unindex[life] = max(u, up)
    for life, conn in parked.items():
        peer = conn.peer_wait
        up = settle.get(peer.id) if peer is not None else None
        if up is not None:
            unindex[life] = up
    return settle, unindex


def find_peers(
    milestones: list[tuple[int, int, Conn]],
    idx: pl.DataFrame,
    raw: dict[int, int],
    conns: dict[int, Conn],
    kept: Kept,
) -> None:
    """An orphaned closer's peer: the newest life indexed with the reversed
    tuple at its close, not closed before it and in CLOSE_WAIT then."""
    rows = [
        (c.id, p, c.learn[2], c.learn[3], c.learn[0], c.learn[1])
        for p, k, c in milestones
        if k == CLOSE and c.last_old == "FIN_WAIT2" and c.learn is not None
    ]
    if not rows:
        return
    closers = pl.DataFrame(
        rows,
        schema={
            "closer": pl.Int64,
            "pos": pl.Int64,
            "laddr": pl.String,
            "lport": pl.Int64,
            "raddr": pl.String,
            "rport": pl.Int64,
        },
        orient="row",
    )
    u = pl.DataFrame(
        {"life": list(raw), "u": list(raw.values())},
        schema={"life": pl.Int64, "u": pl.Int64},
    )
    cand = (
        closers.join(idx.select("life", "learn_pos", "unindex", *TUPLE), on=TUPLE)
        .join(u, on="life", how="left")
        .with_columns(unindex=pl.coalesce("unindex", "u"))
        .filter(
            (pl.col("learn_pos") < pl.col("pos"))
            & (pl.col("unindex").is_null() | (pl.col("unindex") > pl.col("pos")))
        )
        .sort("closer", "learn_pos", descending=[False, True])
    )
    done: set[int] = set()
    lives, at = cand["life"].to_numpy(), cand["pos"].to_numpy()
    states = kept.states_at(lives, at)
    for closer, pos, life, state in zip(
        cand["closer"].to_list(), at.tolist(), lives.tolist(), states, strict=True
    ):
        if closer in done:
            continue
        peer = conns.get(life)
        if peer is None or peer.ended_before(pos):
            continue
        if state is None:
            state = kept.before.get(life, peer.kept_state)
        if state == "CLOSE_WAIT":
            conn = conns[closer]
            conn.peer_wait, peer.twin = peer, conn
            done.add(closer)
