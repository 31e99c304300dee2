"""The columnar correlator: a recording's envelopes in, a Result and rows out.

Data flow, all in CLOCK_MONOTONIC nanoseconds:

  envelopes -> columns (correlator/columns.py: one polars frame per batch)
  -> release rounds (correlator/ordering.py: the watermark puts them in time order)
  -> chunks of ~CHUNK_ITEMS items, each handled as columns:
       lives from the transitions (lifecycles.py: group-by on skaddr), their
       first transitions kept as one frame (kept.py),
       each owner fact's life by joins on the 4-tuple, accept4's peer and
       (pid, fd) claims (lookups.py, facts.py), owners from those facts per
       life and the lives finished once their grace ran out (joins.py,
       owners.py, closing.py),
       the outcomes of the lives it finished by one when/then (outcome_rules.py)
       and their rows as one frame (lifecycle_rows.py),
       epoll and accept figures by group-by, live-state samples by cumsum,
       rows with the owner known a grace after them (rows.py)
  -> sink: rows as frames (events.jsonl, events.parquet), the finished
     lifecycles as one frame per chunk (correlator/connection_schema.py).

Memory is bounded by the chunk, the live connections and what the watermark
holds back, never by the length of the run.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import polars as pl

from bus.schema import Envelope, Kind
from correlator.columns import SCHEMAS, Batch, Columns, chunk_frame
from correlator.joins import Joins
from correlator.kept import Kept
from correlator.lifecycles import Lives, bit_length
from correlator.ordering import Release, WatermarkConfig
from correlator.phases import Phases
from correlator.result import EpollFigures, Result
from correlator.rows import Rows, RowsChunk
from correlator.samples import Samples
from correlator.stats import Log2Histogram, Series

# The joins cost per chunk what the old per-fact fold cost per item at 20k;
# at 50k they are no slower and memory with 100k held is the same (at 100k
# items: 10% less CPU but 11% more memory with 100k held). docs/report.md.
CHUNK_ITEMS = 50_000
_KIND_CODE = {"tcp_state": 0, "accept": 1, "epoll": 2, "app": 3, "unknown": 4}
_RAW_KIND = getattr(Kind, "KERNEL_RAW", None)
MAX_TIDS = 4096


class Sink(Protocol):
    def rows(self, chunk: RowsChunk) -> None: ...
    def connections(self, frame: pl.DataFrame) -> None: ...


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Python's cycle collector off while a chunk is worked on.

    A chunk makes tens of thousands of small objects (lives, owner facts,
    rows) that mostly live on; the collector would scan them and every older
    one again and again (a quarter of the CPU time on 10k held connections).
    Paused, it runs once between chunks: memory stays bounded by the chunk.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _freeze_survivors() -> None:
    """At a chunk's end: its cyclic garbage collected, what survives frozen.

    Most of what a chunk makes lives on (lives, owner facts, waiting rows).
    The collector, paused only inside feed(), otherwise runs its full passes
    while the recording is read and scans all of it again each time (100k
    held: reading cost 1.6 s CPU inside the replay, 0.68 s without them).
    A young pass frees the chunk's own cycles (the chunk ran with the
    collector paused, so all it made is young); gc.freeze() then moves the
    survivors where no pass looks. Reference counting still frees them; only
    cycles among them wait for the unfreeze in finish() (none in the bench's
    replays). Process-wide, like gc.disable().
    """
    gc.collect(0)
    gc.freeze()


@dataclass
class CorrelatorConfig:
    window_ns: int = 2_000_000_000
    slack_ns: int = 100_000_000
    lag_margin_ns: int = 1_000_000_000
    # How long a finished connection stays joinable for late app records.
    grace_ns: int = 500_000_000
    # Resolution of the kernel-derived live-state series.
    sample_ns: int = 100_000_000
    series_cap: int = 2000
    chunk_items: int = CHUNK_ITEMS


@dataclass
class _Chunk:
    parts: list[tuple[Batch, int, int, int]] = field(default_factory=list)  # batch, lo, hi, round
    items: int = 0


class Correlator:
    """Feed envelopes in arrival order, then finish() for the Result."""

    def __init__(
        self,
        sink: Sink,
        meta: dict[str, Any] | None = None,
        config: CorrelatorConfig | None = None,
    ) -> None:
        self.sink = sink
        self.meta = meta or {}
        self.cfg = cfg = config or CorrelatorConfig()
        self.t0 = int(self.meta.get("started_mono_ns") or 0)
        self.n: dict[str, int] = {}
        self.columns = Columns(self.n)
        self.release = Release(WatermarkConfig(cfg.window_ns, cfg.slack_ns, cfg.lag_margin_ns))
        self.phases = Phases(self.meta)
        self.samples = Samples(self.phases, cfg.series_cap)
        self.lives = Lives(experiment_end=self.phases.experiment_end)
        self.finished: list[pl.DataFrame] = []  # lifecycles not yet handed over
        emit = self.finished.append
        self.kept = Kept()
        self.joins = Joins(self.meta, self.phases, self.n, emit, cfg.grace_ns, self.t0, self.kept)
        self.rows = Rows(self.joins, self.n, self.t0, cfg.grace_ns, self.phases)
        self.chunk = _Chunk()
        self.base = 0  # position of the chunk's first item
        self.now = 0  # newest item time processed
        self.first_ns: int | None = None
        self.max_live = 0
        self.state_time: dict[str, Log2Histogram] = {}
        self.live_states: dict[str, int] = {}
        self.kernel_series = Series(cfg.series_cap)
        self.next_sample = 0
        self.epoll: dict[int, EpollFigures] = {}
        self.max_settle = 0

    # ---- input -----------------------------------------------------------------

    def feed(self, env: Envelope) -> None:
        with _cyclic_gc_paused():
            self._feed(env)

    def _feed(self, env: Envelope) -> None:
        kind = env.kind
        sender = env.sender
        rel = self.release
        rel.arrival_ns = max(rel.arrival_ns, env.mono_ns)
        if kind is Kind.KERNEL or (_RAW_KIND is not None and kind is _RAW_KIND):
            stream = (sender, str(env.body.get("probe", "")))
            if kind is Kind.KERNEL:
                batches = self.columns.kernel(env.body)
            else:
                batches = self.columns.raw(env.body)
            if not batches:
                rel.push(np.empty(0, np.int64), None, stream, env.mono_ns)
            for b in batches:
                rel.push(b.ts, b, stream, env.mono_ns)
        elif kind is Kind.LOG:
            b = self.columns.log(env.body)
            rel.push(b.ts, b, (sender, ""), env.mono_ns)
        elif kind is Kind.STATS:
            self.samples.stats(env.body, env.mono_ns)
        elif kind is Kind.EOF:
            rel.eof(sender)
        rel.sent(sender, env.mono_ns)
        self._take(rel.pop_until(rel.watermark()))

    def _take(self, stretches: list[tuple[Any, int, int]]) -> None:
        if not stretches:
            return
        r = self.release.rounds
        for b, lo, hi in stretches:
            self.chunk.parts.append((b, lo, hi, r))
            self.chunk.items += hi - lo
        if self.chunk.items >= self.cfg.chunk_items:
            self._process()

    # ---- one chunk -------------------------------------------------------------

    def _process(self) -> None:
        with _cyclic_gc_paused():
            self._process_chunk()
        _freeze_survivors()

    def _process_chunk(self) -> None:
        parts = self.chunk.parts
        self.chunk = _Chunk()
        if not parts:
            return
        # Position of every item: (round, time, arrival) order.
        ts = np.concatenate([b.ts[lo:hi] for b, lo, hi, _ in parts])
        tie = np.concatenate([b.tie[lo:hi] for b, lo, hi, _ in parts])
        rnd = np.concatenate([np.full(hi - lo, r, np.int64) for _, lo, hi, r in parts])
        order = np.lexsort((tie, ts, rnd))
        pos = np.empty(len(ts), np.int64)
        pos[order] = np.arange(self.base, self.base + len(ts))
        # now: the newest time processed once each position's item is handled.
        ts_sorted = ts[order]
        now = np.maximum.accumulate(np.maximum(ts_sorted, self.now))
        if self.first_ns is None:
            self.first_ns = int(ts_sorted[0])
        base = self.base

        # Split back by kind, each with its positions.
        by_kind: dict[str, list[tuple[Batch, int, int, np.ndarray]]] = {}
        off = 0
        for b, lo, hi, _ in parts:
            by_kind.setdefault(b.kind, []).append((b, lo, hi, pos[off : off + hi - lo]))
            off += hi - lo
        frames = {k: self._frame(k, v) for k, v in by_kind.items() if k in SCHEMAS}
        app: list[tuple[int, dict[str, Any]]] = []
        for b, lo, hi, p in by_kind.get("app", []):
            app.extend(zip(p.tolist(), b.data[lo:hi], strict=True))
        app.sort(key=lambda x: x[0])
        unknown = sum(hi - lo for _, lo, hi, _ in by_kind.get("unknown", []))
        if unknown:
            self.n["rejected.unknown_probe"] = self.n.get("rejected.unknown_probe", 0) + unknown

        tcp = frames.get("tcp_state")
        if tcp is not None:
            self.n["kernel.tcp_state"] = self.n.get("kernel.tcp_state", 0) + len(tcp)
            lives = self.lives.chunk(tcp)
            self.kept.chunk(tcp, lives.conn_ids, lives.touched)
            tcp = tcp.with_columns(conn=pl.Series(lives.conn_ids))
            frames["tcp_state"] = tcp
            milestones = lives.milestones
            self._live_figures(lives)
            deltas = lives.live_delta
        else:
            milestones = []
            deltas = pl.DataFrame(schema={"pos": pl.Int64, "state": pl.String, "delta": pl.Int64})
        self._samples(deltas, now, base)

        # Owners: the facts joined to their lives, then applied in position order.
        j = self.joins
        j.chunk(base, now, self.now, milestones, frames.get("accept"), app)
        self.now = int(now[-1])
        j.now = self.now
        j.decide_finished()

        ep = frames.get("epoll")
        if ep is not None:
            self._epoll(ep)
        self._flush_rows(self.rows.chunk(frames, app, now, base))
        self.base += len(ts)

    def _flush_rows(self, chunk: RowsChunk) -> None:
        if len(chunk):
            self.sink.rows(chunk)
        if self.finished:
            self.sink.connections(pl.concat(self.finished))
            self.finished.clear()
        # Lives whose rows are all written and whose outcome is known are done.
        # Only the finished ones are looked at, not every live one per chunk
        # (O(held x chunks): 200k lives x 80 chunks with 100k held).
        first = self.rows.first_pending
        conns = self.joins.conns
        waiting = []
        done = []
        for c in self.joins.finished:
            if c.close_pos is None or c.close_pos < first:
                conns.pop(c.id, None)
                done.append(c.id)
            else:
                waiting.append(c)
        self.joins.finished = waiting
        self.joins.owners.forget(done)
        self.joins.actions.forget(done)

    def _frame(self, kind: str, parts: list[tuple[Batch, int, int, np.ndarray]]) -> pl.DataFrame:
        return chunk_frame(parts)

    def _live_figures(self, lives: Any) -> None:
        """Live-socket counts and the time spent in each state."""
        if len(lives.live_count):
            self.max_live = max(self.max_live, int(lives.live_count.max()))
        self.n["kernel.transition_gap"] = self.n.get("kernel.transition_gap", 0) + lives.gaps
        for st, bucket, count, total, mx in lives.state_time.iter_rows():
            self.state_time.setdefault(st, Log2Histogram()).add_bucket(bucket, count, total, mx)

    def _samples(self, deltas: pl.DataFrame, now: np.ndarray, base: int) -> None:
        """Live sockets per state, sampled after the first item at or past each
        sample time (`deltas`: each transition's -1 and +1 by state)."""
        # The sample points first (a few per chunk), then the deltas summed
        # per state between them by one group-by, in order of appearance.
        at: list[int] = []
        n = len(now)
        i = 0
        while i < n:
            i = int(np.searchsorted(now, self.next_sample, side="left"))
            if i >= n:
                break
            at.append(i)
            self.next_sample = int(now[i]) + self.cfg.sample_ns
            i += 1
        cuts = np.asarray(at, dtype=np.int64) + base
        d = deltas.sort("pos", maintain_order=True)
        seg = np.searchsorted(cuts, d["pos"].to_numpy(), side="left")  # samples before it
        steps = (
            d.with_columns(seg=pl.Series(seg))
            .group_by("seg", "state", maintain_order=True)
            .agg(pl.col("delta").sum())
        )
        live = self.live_states
        rows = iter(steps.iter_rows())
        step = next(rows, None)
        for j, ix in enumerate(at + [-1]):
            while step is not None and step[0] == j:
                live[step[1]] = live.get(step[1], 0) + step[2]
                step = next(rows, None)
            if ix >= 0:
                self.kernel_series.add(int(now[ix]), {s: v for s, v in live.items() if v})

    def _epoll(self, ep: pl.DataFrame) -> None:
        """epoll_wait figures per process, by group-by."""
        self.n["kernel.epoll"] = self.n.get("kernel.epoll", 0) + len(ep)
        self.phases_count_many(ep["ts"].to_numpy(), "epoll.calls")
        e = ep.with_columns(
            err=pl.col("errno") != 0,
            empty=(pl.col("errno") == 0) & (pl.col("ready") == 0),
            woke=(pl.col("errno") == 0) & (pl.col("ready") != 0),
        )
        per = e.group_by("pid").agg(
            pl.len().alias("calls"),
            pl.col("err").sum().alias("errors"),
            pl.col("empty").sum().alias("timeouts"),
            pl.col("ready").filter(pl.col("woke")).sum().alias("ready_total"),
        )
        for pid, calls, errors, timeouts, ready_total in per.iter_rows():
            f = self.epoll.get(pid)
            if f is None:
                f = self.epoll[pid] = EpollFigures()
            f.calls += calls
            f.errors += errors
            f.timeouts += timeouts
            f.ready_total += ready_total or 0
        ready = e.filter(pl.col("woke")).group_by("pid", "ready").len()
        for pid, r, c in ready.iter_rows():
            rh = self.epoll[pid].ready
            rh.counts[r] = rh.counts.get(r, 0) + c
            rh.count += c
        tids = e.group_by("pid", "tid", maintain_order=True).agg(
            pl.len(),
            pl.col("empty").sum(),
            pl.col("ready").max(),
            pl.col("comm").first().fill_null(""),
        )
        for pid, tid, c, empty, top, comm in tids.iter_rows():
            t = self.epoll[pid].tids
            slot = t.get(tid)
            if slot is None and len(t) < MAX_TIDS:
                slot = t[tid] = [0, 0, 0, comm]
            if slot is not None:
                slot[0] += c
                slot[1] += empty
                slot[2] = max(slot[2], top)
        dur = e["dur_ns"].fill_null(0).to_numpy()
        w = pl.DataFrame({"pid": e["pid"], "dur": dur, "b": bit_length(dur)})
        for pid, b, c, total, mx in (
            w.group_by("pid", "b")
            .agg(pl.len(), pl.col("dur").sum().alias("total"), pl.col("dur").max().alias("mx"))
            .iter_rows()
        ):
            h = self.epoll[pid].wait
            h.buckets[b] = h.buckets.get(b, 0) + c
            h.count += c
            h.total += total
            h.max = max(h.max, mx)

    def phases_count_many(self, ts: np.ndarray, path: str) -> None:
        idx = self.phases.of_many(ts)
        counts = np.bincount(idx[idx >= 0], minlength=len(self.phases.names))
        for i, c in enumerate(counts.tolist()):
            if c:
                self.phases.count_in(self.phases.names[i], path, c)

    # ---- end -------------------------------------------------------------------

    def finish(self) -> Result:
        """Flush everything: the held batches, the last chunk, the live sockets."""
        self._take(self.release.drain())
        self._process()
        with _cyclic_gc_paused():
            self.joins.now = self.now
            self._flush_rows(self.rows.end())
            self.joins.end(list(self.lives.open_by_sk.values()))
            self._flush_rows(RowsChunk())  # forgets the lives finished at the end
        gc.unfreeze()  # back in the collector's sight: their cycles, if any, collectable
        j = self.joins
        return Result(
            t0=self.t0,
            n=self.n,
            pid_actor=j.pid_actor,
            phase_names=self.phases.names,
            phase_starts=self.phases.starts,
            outcomes=j.tallies.outcomes,
            outcome_owner=j.tallies.outcome_owner,
            peers_of_stuck=j.peers_of_stuck(),
            no_port_failures=j.tallies.no_port_failures,
            max_live=self.max_live,
            conns_by_owner_max=j.conns_by_owner_max,
            lifetimes=j.tallies.lifetimes,
            state_time=self.state_time,
            app_events=j.app_events,
            errors=j.errors,
            error_owner=j.error_owner,
            progress=self.samples.progress,
            accepts=j.accepts,
            epoll=self.epoll,
            epoll_kernel_hist=self.samples.epoll_kernel_hist,
            phase_counts=self.phases.counts,
            phase_progress=self.phases.progress,
            kernel_series=self.kernel_series,
            observer_series=self.samples.observer,
            fd_series=self.samples.fds,
            probe_programs=self.samples.probe_programs,
            first_ns=self.first_ns,
            last_ns=self.now,
            late_events=self.release.late,
            reorder_max_held=self.release.max_held,
            settle_max_held=self.rows.max_pending,
        )
