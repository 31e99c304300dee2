"""The owner facts of a chunk as columns, and what they add up to.

The actors' records become one frame (the fields the joins use, addresses
normalised as the kernel reports them, the error a record reports) and so do
accept4 calls; their counts (per event, per error and owner, per phase, per
process) are group-bys over those frames.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from correlator.outcomes import errno_name
from correlator.phases import Phases

APP_COVERAGE = {
    e: (f"coverage.app_{e}", f"coverage.app_{e}_matched")
    for e in ("connect", "accept", "connect_failed")
}


class FactCounts:
    def __init__(
        self,
        counts: dict[str, int],
        phases: Phases,
        pid_actor: dict[int, str],
        pid_learnt: dict[int, int],
    ) -> None:
        self.n = counts
        self.phases = phases
        self.pid_actor = pid_actor
        self.pid_learnt = pid_learnt
        self.errors: dict[str, int] = {}
        self.error_owner: dict[tuple[str, str, str, int], int] = {}
        self.app_events: dict[str, int] = {}
        self.accepts: dict[int, dict[str, int]] = {}

    def count(self, key: str, k: int = 1) -> None:
        self.n[key] = self.n.get(key, 0) + k

    def app(self, f: pl.DataFrame) -> None:
        """The records: per event, errors by owner and phase, coverage."""
        if not len(f):
            return
        self.count("app.records", len(f))
        for event, k in f.group_by("event", maintain_order=True).len().iter_rows():
            self.app_events[event] = self.app_events.get(event, 0) + k
            keys = APP_COVERAGE.get(event)
            if keys is not None:
                self.count(keys[0], k)
        err = f.filter(pl.col("error").is_not_null())
        if not len(err):
            return
        for error, event, actor, pid, k in (
            err.group_by("error", "event", "actor_str", "pid_or", maintain_order=True)
            .len()
            .iter_rows()
        ):
            self.errors[error] = self.errors.get(error, 0) + k
            key = (error, event, actor, pid)
            self.error_owner[key] = self.error_owner.get(key, 0) + k
        ph = self.phases.of_many(err["mono_ns"].to_numpy())
        names = self.phases.names
        per = pl.DataFrame({"ph": ph, "error": err["error"]}).filter(pl.col("ph") >= 0)
        for i, error, k in per.group_by("ph", "error", maintain_order=True).len().iter_rows():
            self.phases.count_in(names[i], f"errors.{error}", k)

    def learn_pids(self, f: pl.DataFrame) -> None:
        """pid -> actor from the first record naming both, at its position."""
        known = f.filter(pl.col("pid").is_not_null() & pl.col("actor_ok"))
        if not len(known):
            return
        first = known.group_by("pid", maintain_order=True).agg(pl.col("pos", "actor").first())
        for pid, pos, actor in first.iter_rows():
            if pid not in self.pid_actor:
                self.pid_actor[pid] = actor
                self.pid_learnt[pid] = pos

    def accept(self, acc: pl.DataFrame) -> None:
        """accept4 calls: per process and phase, by result."""
        if not len(acc):
            return
        self.count("kernel.accept", len(acc))
        named = acc.with_columns(
            what=pl.when(pl.col("ok")).then(pl.lit("ok")).otherwise(pl.col("err_name"))
        )
        for pid, what, k in named.group_by("pid", "what", maintain_order=True).len().iter_rows():
            per = self.accepts.setdefault(pid, {})
            per[what] = per.get(what, 0) + k
        ph = self.phases.of_many(named["ts"].to_numpy())
        names = self.phases.names
        per_ph = pl.DataFrame({"ph": ph, "what": named["what"]}).filter(pl.col("ph") >= 0)
        for i, what, k in per_ph.group_by("ph", "what", maintain_order=True).len().iter_rows():
            self.phases.count_in(names[i], f"accept.{what}", k)


_APP_SCHEMA = {
    "mono_ns": pl.Int64,
    "event": pl.String,
    "actor": pl.String,
    "pid": pl.Int64,
    "fd": pl.Int64,
    "laddr": pl.String,
    "lport": pl.Int64,
    "raddr": pl.String,
    "rport": pl.Int64,
    "error": pl.String,
    "errno": pl.Int64,
}


def _names(codes: pl.Series) -> pl.Series:
    names = {c: errno_name(c) for c in codes.unique().to_list() if c}
    return codes.replace_strict(names, default=None, return_dtype=pl.String)


def app_frame(app: list[tuple[int, dict[str, Any]]]) -> pl.DataFrame:
    """The actors' records as columns: position, the fields a join uses
    (addresses normalised), the error they report."""
    recs = [r for _, r in app]
    f = (
        pl.from_dicts(recs, schema=_APP_SCHEMA, strict=False)
        if recs
        else pl.DataFrame(schema=_APP_SCHEMA)
    )
    norm = {c: pl.col(c).str.strip_prefix("::ffff:") for c in ("laddr", "raddr")}
    err = pl.col("error")
    f = f.with_columns(
        pos=pl.Series([p for p, _ in app], dtype=pl.Int64),
        event=pl.col("event").fill_null(""),
        actor_ok=pl.col("actor").is_not_null(),
        actor_str=pl.col("actor").fill_null("None"),
        pid_or=pl.col("pid").fill_null(-1),
        error=pl.when(err.is_not_null() & (err != ""))
        .then(err)
        .otherwise(
            pl.when(pl.col("errno").fill_null(0) != 0).then(_names(f["errno"].fill_null(0)))
        ),
        has_tuple=(pl.col("lport").fill_null(0) != 0)
        & (pl.col("rport").fill_null(0) != 0)
        & pl.col("laddr").is_not_null()
        & pl.col("raddr").is_not_null(),
        **norm,
    )
    return f


_ACC_SCHEMA = {
    "pos": pl.Int64,
    "ts": pl.Int64,
    "pid": pl.Int64,
    "fd": pl.Int64,
    "errno": pl.Int64,
    "peer_addr": pl.String,
    "peer_port": pl.Int64,
}


def accept_frame(acc: pl.DataFrame | None) -> pl.DataFrame:
    if acc is None:
        acc = pl.DataFrame(schema=_ACC_SCHEMA)
    a = acc.select(list(_ACC_SCHEMA)).cast(_ACC_SCHEMA)  # type: ignore[arg-type]
    return a.with_columns(
        ok=(pl.col("fd") >= 0) & (pl.col("errno").fill_null(0) == 0),
        err_name=_names(a["errno"].fill_null(0)),
        peer_addr=pl.col("peer_addr").fill_null("").str.strip_prefix("::ffff:"),
        peer_port=pl.col("peer_port").fill_null(0),
    )
