"""The scenario's phases: which one a time falls in, and counts per phase."""

from __future__ import annotations

import bisect
from typing import Any

import numpy as np


class Phases:
    def __init__(self, meta: dict[str, Any]) -> None:
        phases = [p for p in meta.get("phases") or [] if isinstance(p, dict) and "name" in p]
        phases.sort(key=lambda p: p.get("start_mono_ns") or 0)
        self.names = [str(p["name"]) for p in phases]
        self.starts = [int(p.get("start_mono_ns") or 0) for p in phases]
        self.ends: list[int | None] = [
            p["end_mono_ns"] if isinstance(p.get("end_mono_ns"), int) else None for p in phases
        ]
        # The experiment is over when its last phase ends; what the teardown
        # does after that (killing a leaker closes its sockets) is not its result.
        ends = [e for e in self.ends if e is not None]
        self.experiment_end: int | None = max(ends) if ends else None
        self._counts: dict[str, dict[str, Any]] = {}
        # Counts are kept flat, (phase, dotted path) -> n, and nested on demand.
        self._flat: dict[tuple[str, str], int] = {}
        # Per phase, each actor's last progress report sent before it ended.
        self.progress: dict[str, dict[str, tuple[int, dict[str, Any]]]] = {}

    def of(self, ts: int) -> str | None:
        i = bisect.bisect_right(self.starts, ts) - 1
        return self.names[i] if i >= 0 else None

    def of_many(self, ts: np.ndarray) -> np.ndarray:
        """Phase index per time (-1 before the first phase)."""
        return np.searchsorted(np.asarray(self.starts, dtype=np.int64), ts, side="right") - 1

    def count(self, ts: int, path: str, n: int = 1) -> None:
        name = self.of(ts)
        if name is not None:
            key = (name, path)
            self._flat[key] = self._flat.get(key, 0) + n

    def count_in(self, name: str, path: str, n: int = 1) -> None:
        key = (name, path)
        self._flat[key] = self._flat.get(key, 0) + n

    @property
    def counts(self) -> dict[str, dict[str, Any]]:
        """Per phase, the counts as a tree of dotted paths."""
        for (name, path), n in self._flat.items():
            node = self._counts.setdefault(name, {})
            *parents, leaf = path.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = node.get(leaf, 0) + n
        self._flat.clear()
        return self._counts

    def peak(self, ts: int, path: str, value: int) -> None:
        name = self.of(ts)
        if name is None:
            return
        node = self._counts.setdefault(name, {})
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = max(node.get(leaf, 0), value)

    def note_progress(self, actor: str, ts: int, tree: dict[str, Any]) -> None:
        for name, end in zip(self.names, self.ends, strict=True):
            if end is not None and ts > end:
                continue
            per = self.progress.setdefault(name, {})
            old = per.get(actor)
            if old is None or old[0] <= ts:
                per[actor] = (ts, tree)
