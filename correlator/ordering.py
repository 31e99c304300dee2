"""Time order for items from many senders: which watermark round releases each.

Senders deliver their own items in (nearly) time order, interleaved with the
others'. Each batch is held until the watermark passes it; what one round
releases is processed in (time, arrival) order, rounds one after another.
An item older than what was already released is 'late': it is still
processed (in the next round), and counted, never dropped.

This works on whole batches: a batch's sorted time column is bisected, never
walked item by item. The order it gives is the one a single heap of every
item would give, round by round.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Held:
    """One batch waiting: its times sorted, the part not yet released."""

    ts: np.ndarray  # sorted (stable: equal times keep their arrival order)
    payload: Any  # what the caller slices when a stretch is released
    lo: int = 0


@dataclass
class WatermarkConfig:
    # Items from a sender that is still active wait until every active sender
    # has sent past them, but never longer than `window_ns` of arrival time.
    window_ns: int = 2_000_000_000
    # Items within one stream can be a little out of order (per-CPU delivery).
    slack_ns: int = 100_000_000
    # How much further than already seen a stream's lag may grow.
    lag_margin_ns: int = 1_000_000_000


@dataclass
class Release:
    """Batches in, released stretches out, with late items counted."""

    cfg: WatermarkConfig = field(default_factory=WatermarkConfig)
    released_ns: int = 0
    late: int = 0
    max_held: int = 0
    rounds: int = 0
    _held: int = 0
    _heap: list[tuple[int, int, Held]] = field(default_factory=list)
    _seq: int = 0
    # For the watermark: each sender's last send time; per stream (sender,
    # probe) the newest item time and the worst lag of a batch behind its send.
    sender_env: dict[str, int] = field(default_factory=dict)
    stream_seen: dict[tuple[str, str], int] = field(default_factory=dict)
    stream_lag: dict[tuple[str, str], int] = field(default_factory=dict)
    arrival_ns: int = 0

    def push(self, ts: np.ndarray, payload: Any, stream: tuple[str, str], sent_ns: int) -> None:
        """Hold one batch (ts sorted); note its stream's lag and newest time."""
        n = len(ts)
        if n:
            if self.released_ns:
                self.late += int(np.count_nonzero(ts < self.released_ns))
            heapq.heappush(self._heap, (int(ts[0]), self._seq, Held(ts, payload)))
            self._seq += 1
            self._held += n
            self.max_held = max(self.max_held, self._held)
            lo, hi = min(sent_ns, int(ts[0])), max(int(ts[-1]), 0)
        else:
            lo, hi = sent_ns, 0
        self.stream_lag[stream] = max(self.stream_lag.get(stream, 0), sent_ns - lo)
        self.stream_seen[stream] = max(self.stream_seen.get(stream, 0), hi)

    def sent(self, sender: str, sent_ns: int) -> None:
        self.arrival_ns = max(self.arrival_ns, sent_ns)
        self.sender_env[sender] = sent_ns

    def eof(self, sender: str) -> None:
        # A sender that said eof holds nobody back any more.
        for stream in [st for st in self.stream_seen if st[0] == sender]:
            del self.stream_seen[stream]

    def watermark(self) -> int:
        """Time before which no item can still arrive, as far as we can tell.

        Per stream (an actor's log, one probe's ring buffer): its items come
        in time order, so it has delivered everything up to its newest item;
        anything its sender sends later is at most the stream's worst lag
        older than the send time. The slowest stream sets the mark, but never
        holds items beyond `window_ns`.
        """
        env, lag, margin = self.sender_env, self.stream_lag, self.cfg.lag_margin_ns
        marks = [max(seen, env[st[0]] - lag[st] - margin) for st, seen in self.stream_seen.items()]
        by_senders = min(marks) if marks else self.arrival_ns
        return max(by_senders, self.arrival_ns - self.cfg.window_ns) - self.cfg.slack_ns

    def pop_until(self, watermark: int) -> list[tuple[Any, int, int]]:
        """The stretches (payload, lo, hi) the watermark passed: one round."""
        heap = self._heap
        out: list[tuple[Any, int, int]] = []
        rest: list[Held] = []
        top = self.released_ns
        while heap and heap[0][0] <= watermark:
            _, _, h = heapq.heappop(heap)
            j = int(np.searchsorted(h.ts, watermark, side="right"))
            out.append((h.payload, h.lo, j))
            self._held -= j - h.lo
            top = max(top, int(h.ts[j - 1]))
            if j < len(h.ts):
                h.lo = j
                rest.append(h)
        for h in rest:
            heapq.heappush(heap, (int(h.ts[h.lo]), self._seq, h))
            self._seq += 1
        if out:
            self.rounds += 1
            self.released_ns = top
        return out

    def drain(self) -> list[tuple[Any, int, int]]:
        return self.pop_until(1 << 63)

    def __len__(self) -> int:
        return self._held
