"""Bounded aggregates: histograms instead of lists, capped samples."""

from __future__ import annotations

from typing import Any


class Log2Histogram:
    """Counts of non-negative integers in power-of-two buckets.

    Bucket b holds values in [2**(b-1), 2**b); bucket 0 holds 0. Memory is
    bounded by the bit length of the largest value, never by the count.
    """

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.total = 0
        self.max = 0

    def add(self, value: int) -> None:
        b = value.bit_length() if value > 0 else 0
        self.buckets[b] = self.buckets.get(b, 0) + 1
        self.count += 1
        self.total += value
        if value > self.max:
            self.max = value

    def add_bucket(self, bucket: int, count: int, total: int, largest: int) -> None:
        """Values already grouped by bucket (a group-by's count, sum and max)."""
        self.buckets[bucket] = self.buckets.get(bucket, 0) + count
        self.count += count
        self.total += total
        self.max = max(self.max, largest)

    def quantile(self, q: float) -> int:
        """Upper bound of the bucket holding the q-quantile (0 when empty)."""
        if not self.count:
            return 0
        rank = q * self.count
        seen = 0
        for b in sorted(self.buckets):
            seen += self.buckets[b]
            if seen >= rank:
                return min((1 << b) - 1 if b else 0, self.max)
        return self.max

    def as_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "total": self.total,
            "max": self.max,
            "p50": self.quantile(0.5),
            "p99": self.quantile(0.99),
            # bucket upper bound (exclusive) -> count
            "buckets": {str(1 << b if b else 1): n for b, n in sorted(self.buckets.items())},
        }


class ExactHistogram:
    """Counts per distinct small integer (e.g. epoll ready counts <= maxevents)."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.count = 0

    def add(self, value: int) -> None:
        self.counts[value] = self.counts.get(value, 0) + 1
        self.count += 1

    def median(self) -> int:
        if not self.count:
            return 0
        half = (self.count + 1) // 2
        seen = 0
        for v in sorted(self.counts):
            seen += self.counts[v]
            if seen >= half:
                return v
        return max(self.counts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "median": self.median(),
            "counts": {str(v): n for v, n in sorted(self.counts.items())},
        }


class Series:
    """A time series of samples kept under `cap` points by halving its resolution.

    When full, every other point is dropped and only every `stride`-th new
    sample is kept, so a long run keeps an even spread over its whole length.
    """

    def __init__(self, cap: int = 2000) -> None:
        self.cap = cap
        self.points: list[tuple[int, dict[str, int]]] = []
        self.stride = 1
        self._seen = 0
        self.maxima: dict[str, int] = {}

    def add(self, ts: int, values: dict[str, int]) -> None:
        # Peaks are exact even when the point itself is thinned out.
        for k, v in values.items():
            if v > self.maxima.get(k, -1):
                self.maxima[k] = v
        self._seen += 1
        if (self._seen - 1) % self.stride:
            return
        self.points.append((ts, values))
        if len(self.points) >= self.cap:
            self.points = self.points[::2]
            self.stride *= 2

    def peak(self) -> dict[str, int]:
        """Largest value seen per key over every sample added."""
        return dict(self.maxima)
