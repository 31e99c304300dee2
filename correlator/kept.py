"""The kept transitions of every life not yet written, as one frame.

A lifecycle row shows a life's first MAX_TRANSITIONS transitions as its
states. They are kept as rows (life, ts, new, cpu_pid, pos) appended chunk by
chunk, not as Python objects on each live socket, and leave when their
life's row is written. The fold asks one thing of them: a socket's state at
a position of the current chunk (a FIN_WAIT2 closer's peer in CLOSE_WAIT).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from correlator.lifecycles import MAX_TRANSITIONS, Conn

_SCHEMA = {"life": pl.Int64, "ts": pl.Int64, "new": pl.String, "cpu_pid": pl.Int64, "pos": pl.Int64}
# A (life, position) pair as one sortable int: positions stay far below 2**36.
_POS_BITS = 36


class Kept:
    def __init__(self) -> None:
        self.frames: list[pl.DataFrame] = []
        # This chunk's kept rows by (life, position), for states_at.
        self.keys = np.empty(0, np.int64)
        self.news: list[str] = []
        # The state each life of this chunk had from its earlier kept rows.
        self.before: dict[int, str] = {}

    def chunk(self, tcp: pl.DataFrame, ids: np.ndarray, lives: list[Conn]) -> None:
        """`tcp` (sorted by pos) with `ids` its rows' lives; `lives` the lives
        with rows here, in id order, their n_rows counting them."""
        life_ids = np.fromiter((c.id for c in lives), np.int64, len(lives))
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        at = np.searchsorted(life_ids, sorted_ids)
        first = np.searchsorted(sorted_ids, life_ids)
        here = np.diff(np.append(first, len(ids)))
        had = np.fromiter((c.n_rows for c in lives), np.int64, len(lives)) - here
        rank = had[at] + np.arange(len(ids)) - first[at]
        keep = order[rank < MAX_TRANSITIONS]
        keep.sort()
        rows = tcp.select("ts", "new", "cpu_pid", "pos")[keep].with_columns(
            life=pl.Series(ids[keep])
        )
        rows = rows.select(list(_SCHEMA)).cast(_SCHEMA)  # type: ignore[arg-type]
        self.frames.append(rows)
        self.before = {c.id: c.kept_state for c in lives}
        by = np.lexsort((rows["pos"].to_numpy(), rows["life"].to_numpy()))
        self.keys = (rows["life"].to_numpy()[by] << _POS_BITS) | rows["pos"].to_numpy()[by]
        news = rows["new"].to_list()
        self.news = [news[i] for i in by.tolist()]
        # The state after each life's last kept row so far.
        last = rows.group_by("life").agg(pl.col("new").last())
        state = dict(zip(last["life"].to_list(), last["new"].to_list(), strict=True))
        for c in lives:
            s = state.get(c.id)
            if s is not None:
                c.kept_state = s

    def states_at(self, lives: np.ndarray, pos: np.ndarray) -> list[str | None]:
        """Each life's state after its last kept transition of this chunk
        before its `pos`; None where it has none here (then: `before`, or the
        life's kept_state)."""
        if not len(lives):
            return []
        keys = (lives.astype(np.int64) << _POS_BITS) | pos
        i = np.searchsorted(self.keys, keys, side="left") - 1
        ok = (
            (i >= 0) & ((self.keys[np.maximum(i, 0)] >> _POS_BITS) == lives)
            if len(self.keys)
            else np.zeros(len(lives), bool)
        )
        news = self.news
        return [news[j] if good else None for j, good in zip(i.tolist(), ok.tolist(), strict=True)]

    def states(self, ends: dict[int, int]) -> pl.DataFrame:
        """The states of the lives in `ends` (life -> its end time), which
        leave the frame: each kept transition but ->CLOSE, until the next;
        (life, seq, state, start_ns, dur_ns, cpu_pid)."""
        kept = pl.concat(self.frames) if self.frames else pl.DataFrame(schema=_SCHEMA)
        going = kept["life"].is_in(list(ends))
        self.frames = [kept.filter(~going)]
        mine = pl.DataFrame(
            {"life": list(ends), "end": list(ends.values())},
            schema={"life": pl.Int64, "end": pl.Int64},
        )
        return (
            kept.filter(going)
            .sort("life", "pos")
            # Sorted by life: the next row's time if it is the same life's
            # (no window over ~10^4 small groups: several times slower).
            .with_columns(
                nxt=pl.when(pl.col("life") == pl.col("life").shift(-1)).then(pl.col("ts").shift(-1))
            )
            .join(mine, on="life", how="left", maintain_order="left")
            .filter(pl.col("new") != "CLOSE")
            .select(
                "life",
                seq="pos",
                state="new",
                start_ns="ts",
                dur_ns=pl.coalesce("nxt", "end") - pl.col("ts"),
                cpu_pid="cpu_pid",
            )
        )
