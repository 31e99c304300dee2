"""Timeline rows: every item as events.jsonl shows it, with its owner.

A row shows the owner known a grace (`grace_ns` of event time) after it, so
that an owner fact logged just after a transition still reaches it: the row
settles once an item at least that much newer has been handled. Rows settle
in position order; those whose grace runs past the chunk wait for the next.

Kernel rows stay columns: the owner at settle time is an as-of join of the
rows on (connection, position) with the owners' history, the actor of an
accept4/epoll_wait caller a join on pid with when each pid became known.
App records keep their own free-form fields, so they stay dicts.
"""

from __future__ import annotations

import bisect
import errno as errno_mod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from correlator.joins import Joins
from correlator.phases import Phases

_END = 1 << 62
KERNEL_KINDS = ("tcp_state", "accept", "epoll")
# Each kernel row type's fields, in the order events.jsonl writes them.
ROW_FIELDS = {
    "tcp_state": [
        "ts",
        "src",
        "type",
        "conn",
        "old",
        "new",
        "skaddr",
        "saddr",
        "sport",
        "daddr",
        "dport",
        "cpu_pid",
        "cpu_comm",
        "t",
        "phase",
        "owner",
        "cpu_is_owner",
    ],
    "accept": [
        "ts",
        "src",
        "type",
        "conn",
        "pid",
        "actor",
        "tid",
        "syscall",
        "lfd",
        "fd",
        "error",
        "peer_addr",
        "peer_port",
        "dur_ns",
        "t",
        "phase",
    ],
    "epoll": [
        "ts",
        "src",
        "type",
        "pid",
        "actor",
        "tid",
        "syscall",
        "epfd",
        "ready",
        "error",
        "timeout_ms",
        "dur_ns",
        "t",
        "phase",
    ],
}
_KEEP = {
    "tcp_state": [
        "pos",
        "ts",
        "conn",
        "old",
        "new",
        "skaddr",
        "saddr",
        "sport",
        "daddr",
        "dport",
        "cpu_pid",
        "cpu_comm",
    ],
    "accept": [
        "pos",
        "ts",
        "pid",
        "tid",
        "syscall",
        "lfd",
        "fd",
        "errno",
        "peer_addr",
        "peer_port",
        "dur_ns",
    ],
    "epoll": [
        "pos",
        "ts",
        "pid",
        "tid",
        "syscall",
        "epfd",
        "ready",
        "errno",
        "timeout_ms",
        "dur_ns",
    ],
}
_OWNER = pl.Struct({"actor": pl.String, "pid": pl.Int64, "fd": pl.Int64, "via": pl.String})


@dataclass
class RowsChunk:
    """Settled rows, in position order within each part: kernel rows as
    frames (a `pos` column, then the row's fields in events.jsonl order) and
    app rows as (pos, row dict)."""

    kernel: dict[str, pl.DataFrame] = field(default_factory=dict)
    app: list[tuple[int, dict[str, Any]]] = field(default_factory=list)

    def __len__(self) -> int:
        return sum(len(f) for f in self.kernel.values()) + len(self.app)

    def dicts(self) -> Iterator[dict[str, Any]]:
        """Every row as a dict, in position order (tests, small tools)."""
        items: list[tuple[int, dict[str, Any]]] = list(self.app)
        for df in self.kernel.values():
            pos = df["pos"].to_list()
            items.extend(zip(pos, df.drop("pos").to_dicts(), strict=True))
        items.sort(key=lambda x: x[0])
        return (row for _, row in items)


def _errno_names(codes: pl.Series) -> pl.Series:
    names = {c: errno_mod.errorcode.get(c, f"errno{c}") for c in codes.unique().to_list() if c}
    return codes.replace_strict(names, default=None, return_dtype=pl.String)


class Rows:
    def __init__(
        self, joins: Joins, counts: dict[str, int], t0: int, grace_ns: int, phases: Phases
    ) -> None:
        self.joins = joins
        self.n = counts
        self.t0 = t0
        self.grace = grace_ns
        self.phases = phases
        # Rows not settled yet: kernel frames with a `target` column (the
        # event time that settles them); app rows as three parallel columns
        # in position order (no tuple per row: 500k of them with 100k held).
        self.pending: dict[str, pl.DataFrame] = {}
        self.app_pos: list[int] = []
        self.app_target = np.empty(0, np.int64)
        self.app_recs: list[dict[str, Any]] = []
        self.max_pending = 0
        self.first_pending = _END

    def chunk(
        self,
        frames: dict[str, pl.DataFrame],
        app: list[tuple[int, dict[str, Any]]],
        now: np.ndarray,
        base: int,
    ) -> RowsChunk:
        grace = self.grace
        nowser = pl.Series("now", now)
        parts: dict[str, pl.DataFrame] = {}
        for kind in KERNEL_KINDS:
            df = frames.get(kind)
            if df is not None:
                df = df.select(_KEEP[kind]).with_columns(
                    target=nowser.gather(pl.Series(df["pos"].to_numpy() - base)) + grace
                )
            old = self.pending.get(kind)
            if old is not None:
                df = old if df is None else pl.concat([old, df])
            if df is not None:
                parts[kind] = df
        app_pos, targets, recs = self.app_pos, self.app_target, self.app_recs
        if app:
            ps = [p for p, _ in app]
            app_pos = app_pos + ps
            recs = recs + [r for _, r in app]
            targets = np.concatenate([targets, now[np.array(ps, np.int64) - base] + grace])
        # Rows settle in order: the first one whose target is past the chunk's
        # newest time, and every row after it, wait.
        newest = int(now[-1])
        cut = _END
        for df in parts.values():
            late = df.filter(pl.col("target") > newest)
            if len(late):
                cut = min(cut, int(late["pos"].min()))  # type: ignore[arg-type]
        late_app = np.flatnonzero(targets > newest)
        if len(late_app):
            cut = min(cut, app_pos[int(late_app[0])])
        out = RowsChunk()
        self.pending = {}
        held = 0
        for kind, df in parts.items():
            ready = df.filter(pl.col("pos") < cut)
            wait = df.filter(pl.col("pos") >= cut)
            if len(wait):
                self.pending[kind] = wait
                held += len(wait)
            if len(ready):
                at = np.searchsorted(now, ready["target"].to_numpy(), side="left") + base
                out.kernel[kind] = self._settle(kind, ready.drop("target"), at)
        # App rows are in position order (the pending ones come first).
        k = bisect.bisect_left(app_pos, cut)
        self.app_pos, self.app_target, self.app_recs = app_pos[k:], targets[k:], recs[k:]
        held += len(self.app_pos)
        out.app = self._app(app_pos[:k], recs[:k])
        self.max_pending = max(self.max_pending, held)
        self.first_pending = cut
        return out

    def end(self) -> RowsChunk:
        out = RowsChunk()
        for kind, df in self.pending.items():
            out.kernel[kind] = self._settle(
                kind, df.drop("target"), np.full(len(df), _END, np.int64)
            )
        out.app = self._app(self.app_pos, self.app_recs)
        self.pending, self.app_pos, self.app_recs = {}, [], []
        self.app_target = np.empty(0, np.int64)
        self.first_pending = _END
        return out

    # ---- settling ---------------------------------------------------------------

    def _common(self, df: pl.DataFrame, kind: str) -> pl.DataFrame:
        """src, type, t (s since the run's start) and phase."""
        starts = pl.Series(self.phases.starts, dtype=pl.Int64)
        names = self.phases.names
        idx = (
            starts.search_sorted(df["ts"], side="right").cast(pl.Int64) - 1 if len(starts) else None
        )
        if idx is None:
            phase = pl.Series("phase", [None] * len(df), dtype=pl.String)
        else:
            table = pl.Series(names + [None], dtype=pl.String)
            phase = table.gather(idx.replace(-1, len(names)))
        # numpy divides as Python does (polars multiplies by 1e-9 instead).
        d = df["ts"].to_numpy() - self.t0
        t = pl.Series("t", d / 1e9) if self.t0 else pl.lit(None, dtype=pl.Float64)
        return df.with_columns(
            src=pl.lit("kernel"), type=pl.lit(kind), t=t, phase=phase.alias("phase")
        )

    def _settle(self, kind: str, df: pl.DataFrame, at: np.ndarray) -> pl.DataFrame:
        n = self.n
        df = self._common(df.with_columns(at=pl.Series(at, dtype=pl.Int64)), kind)
        if kind == "tcp_state":
            hist = self.joins.owners.of(df["conn"].unique().to_list())
            df = df.sort("at").join_asof(
                hist,
                left_on="at",
                right_on="hp",
                by="conn",
                strategy="backward",
                check_sortedness=False,  # both sorted by position just above
            )
            df = df.sort("pos").with_columns(
                owner=pl.when(pl.col("o_pid").is_not_null()).then(
                    pl.struct(actor="o_actor", pid="o_pid", fd="o_fd", via="o_via").cast(_OWNER)
                ),
                cpu_is_owner=pl.col("o_pid").is_not_null() & (pl.col("o_pid") == pl.col("cpu_pid")),
            )
            owned = int(df["o_pid"].is_not_null().sum())
            n["coverage.kernel_tcp_state"] = n.get("coverage.kernel_tcp_state", 0) + len(df)
            if owned:
                k = "coverage.kernel_tcp_state_owned"
                n[k] = n.get(k, 0) + owned
            return df.select(["pos", *ROW_FIELDS[kind]])
        # accept4 and epoll_wait run in the caller's context: their pid is real.
        # A pid that is no actor's (the orchestrator's own ZeroMQ sockets, say)
        # is outside the lab, not an ownerless lab event.
        j = self.joins
        known = pl.DataFrame(
            {
                "pid": list(j.pid_actor),
                "learnt": [j.pid_learnt.get(p, -1) for p in j.pid_actor],
                "name": list(j.pid_actor.values()),
            },
            schema={"pid": pl.Int64, "learnt": pl.Int64, "name": pl.String},
        )
        any_actor = min(j.pid_learnt.values()) if j.pid_learnt else _END
        df = df.join(known, on="pid", how="left", maintain_order="left").with_columns(
            actor=pl.when(pl.col("learnt") <= pl.col("at")).then(pl.col("name")),
            error=_errno_names(df["errno"]),
        )
        outside = df["actor"].is_null() & (pl.Series(at) >= any_actor)
        n_out = int(outside.sum())
        n_owned = int(df["actor"].is_not_null().sum())
        if n_out:
            for k in ("kernel.outside_lab", f"kernel.outside_lab_{kind}"):
                n[k] = n.get(k, 0) + n_out
        if len(df) - n_out:
            k = f"coverage.kernel_{kind}"
            n[k] = n.get(k, 0) + len(df) - n_out
        if n_owned:
            k = f"coverage.kernel_{kind}_owned"
            n[k] = n.get(k, 0) + n_owned
        if kind == "accept":
            conn_of = j.accept_conn
            df = df.with_columns(
                conn=pl.Series([conn_of.pop(p, None) for p in df["pos"].to_list()], dtype=pl.Int64)
            )
        return df.select(["pos", *ROW_FIELDS[kind]])

    def _app(
        self, positions: list[int], recs: list[dict[str, Any]]
    ) -> list[tuple[int, dict[str, Any]]]:
        """Records at their positions -> (pos, row)."""
        conn_of = self.joins.app_conn
        t0 = self.t0
        phase_of = self.phases.of
        out = []
        for pos, rec in zip(positions, recs, strict=True):
            row: dict[str, Any] = {
                "ts": rec["mono_ns"],
                "src": "app",
                "type": str(rec.get("event", "")),
                "conn": conn_of.pop(pos, None),
            }
            # The record's own fields follow, in its order (a clash overwrites in place).
            row.update(rec)
            row.pop("event", None)
            row.pop("mono_ns", None)
            ts = rec["mono_ns"]
            row["t"] = (ts - t0) / 1e9 if t0 else None
            row["phase"] = phase_of(ts)
            out.append((pos, row))
        return out
