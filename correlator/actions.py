"""What the actors' records did to a life: its first actions, the flags they set.

A life keeps its first MAX_ACTIONS actions (time, event) as they came; the
rest are only counted per event. Both are rows of frames carried from chunk
to chunk (`Actions`), not lists per life, and forgotten with the lives. The
records also mark it accepted, closed by the application (a close with an
fd), its peer's FIN read (peer_close) or failed with the error of its connect_failed record.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from correlator.lifecycles import Conn

MAX_ACTIONS = 16
_FIRST = {"life": pl.Int64, "ts_ns": pl.Int64, "event": pl.String}
_PAST = {"life": pl.Int64, "event": pl.String, "n": pl.Int64}


class Actions:
    def __init__(self) -> None:
        self.first = pl.DataFrame(schema=_FIRST)  # each life's first MAX_ACTIONS, in order
        self.past = pl.DataFrame(schema=_PAST)  # counts past them, in first-seen order
        self.pending: list[tuple[int, int, str]] = []  # from the rare records

    def note(self, life: int, ts: int, event: str) -> None:
        """One action, in position order (the rare records)."""
        self.pending.append((life, ts, event))

    def add(self, acts: pl.DataFrame) -> None:
        """`acts`: (life, ts_ns, event) in position order."""
        self._flush()
        self._add(acts)

    def _flush(self) -> None:
        if self.pending:
            more = pl.DataFrame(self.pending, schema=_FIRST, orient="row")
            self.pending = []
            self._add(more)

    def _add(self, acts: pl.DataFrame) -> None:
        if not len(acts):
            return
        lives = acts["life"].unique().to_list()
        had = (
            self.first.filter(pl.col("life").is_in(lives))
            .group_by("life")
            .agg(had=pl.len().cast(pl.Int64))
        )
        ranked = acts.join(had, on="life", how="left", maintain_order="left")
        ranked = ranked.with_columns(
            rank=pl.col("had").fill_null(0) + pl.Series(_rank_in_run(acts["life"].to_numpy()))
        )
        keep = pl.col("rank") < MAX_ACTIONS
        self.first = pl.concat([self.first, ranked.filter(keep).select(*_FIRST)])
        over = ranked.filter(~keep)
        if len(over):
            counts = over.group_by("life", "event", maintain_order=True).agg(
                n=pl.len().cast(pl.Int64)
            )
            self.past = pl.concat([self.past, counts])

    def of(self, ids: list[int]) -> tuple[pl.DataFrame, pl.DataFrame]:
        """These lives' actions (id, ts_ns, event) in order, and their counts
        per event (id, event, n) in first-seen order."""
        self._flush()
        mine = pl.col("life").is_in(ids)
        first = self.first.filter(mine)
        counts = (
            pl.concat(
                [first.select("life", "event", n=pl.lit(1, pl.Int64)), self.past.filter(mine)]
            )
            .group_by("life", "event", maintain_order=True)
            .agg(pl.col("n").sum())
        )
        return first.rename({"life": "id"}), counts.rename({"life": "id"})

    def forget(self, ids: list[int]) -> None:
        if not ids:
            return
        self._flush()
        gone = pl.col("life").is_in(ids)
        self.first = self.first.filter(~gone)
        if len(self.past):
            self.past = self.past.filter(~gone)


def _rank_in_run(key: np.ndarray) -> np.ndarray:
    """Each row's rank among the rows with its key, in row order (polars'
    windows over ~10^4 small groups cost several times this)."""
    n = len(key)
    order = np.argsort(key, kind="stable")
    k = key[order]
    start = np.ones(n, bool)
    start[1:] = k[1:] != k[:-1]
    idx = np.arange(n)
    rank = np.empty(n, np.int64)
    rank[order] = idx - np.maximum.accumulate(np.where(start, idx, 0))
    return rank


def apply_flags(acts: pl.DataFrame, conns: dict[int, Conn], actions: Actions) -> None:
    """accepted, app_closed, fin_read, error and the actions of the lives the records name."""
    ev = pl.col("event")
    per = acts.group_by("life", maintain_order=True).agg(
        accepted=(ev == "accept").any(),
        closed=((ev == "close") & pl.col("fd").is_not_null()).any(),
        fin=(ev == "peer_close").any(),
        error=pl.col("error").filter(ev == "connect_failed").last(),
    )
    known = [life for life in per["life"].to_list() if life in conns]
    actions.add(
        acts.filter(pl.col("life").is_in(known)).select("life", ts_ns="mono_ns", event="event")
    )
    flagged = per.filter(
        pl.col("accepted") | pl.col("closed") | pl.col("fin") | pl.col("error").is_not_null()
    )
    for life, accepted, closed, fin, error in flagged.iter_rows():
        conn = conns.get(life)
        if conn is None:
            continue
        if accepted:
            conn.accepted = True
        if closed:
            conn.app_closed = True
        if fin:
            conn.fin_read = True
        if error:
            conn.error = str(error)
