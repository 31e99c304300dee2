"""The result row and paired runs: the rules that decide what a row reports.

Every figure in the table is a ratio against a peer measured in the same
invocation, because this 2-core machine is shared and noisy: an absolute
figure alone would say more about the neighbours than about tcplab. The two
arms run as pairs, back to back, who goes first alternating; a row's ratio
is the median of its paired ratios and the table shows their spread
(min-max) and how many pairs. A spread wider than SPREAD_LIMIT either way
of the median makes `paired()` add pairs (bounded) until the last ones
agree; a row that never settles is marked noisy, not hidden.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.common import log

# A row is steady when every paired ratio of its window is within this
# fraction of their median (the "±10%").
SPREAD_LIMIT = 0.10


@dataclass
class Row:
    """One line of the table: a figure, its peer, their ratio and the goal."""

    key: str  # stable id (the smoke test checks these)
    section: str
    measure: str
    value: float | None
    unit: str
    peer: float | None = None
    peer_label: str = ""
    ratio: float | None = None
    goal: str = "—"  # e.g. ">= 0.95" applied to `goal_on`
    goal_on: str = "ratio"  # "ratio" or "value"
    met: bool | None = None  # None: no goal, or could not be measured
    note: str = ""
    # Raw figures per arm. With two lists of equal length, the first is the
    # value's arm and the second the peer's, paired by index (one round each).
    runs: dict[str, list[float]] = field(default_factory=dict)
    incomplete: bool = False  # measured only part of the way: the goal cannot be met
    ratios: list[float] = field(default_factory=list)  # the paired ratios `ratio` is the median of
    pairs_run: int = 0  # pairs measured in all (>= len(ratios) when the window slid)
    noisy: bool = False  # the paired ratios never came within SPREAD_LIMIT of their median
    # The goal's alternative, met, in words (loss_onset: "no loss at the most
    # this machine generated"): judge() counts the row as met.
    met_by: str = ""

    def judge(self) -> Row:
        """Fill `ratio` (median of the paired ratios, else value / peer), the
        spread, and `met` from `goal`."""
        if not self.ratios:
            self.ratios = paired_ratios(self.runs)
            self.pairs_run = self.pairs_run or len(self.ratios)
        if self.ratios:
            self.noisy = not steady(self.ratios)
            if self.ratio is None:
                self.ratio = median(self.ratios)
        if self.ratio is None and self.value is not None and self.peer:
            self.ratio = self.value / self.peer
        target = self.ratio if self.goal_on == "ratio" else self.value
        if self.incomplete and self.goal != "—":
            self.met = False
            return self
        if self.goal == "—" or target is None:
            self.met = None
            return self
        op, _, num = self.goal.partition(" ")
        limit = float(num)
        self.met = {
            ">=": target >= limit,
            "<=": target <= limit,
            "<": target < limit,
            ">": target > limit,
            "==": target == limit,
        }[op]
        self.met = self.met or bool(self.met_by)
        return self

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def spread(self) -> tuple[float, float] | None:
        return (min(self.ratios), max(self.ratios)) if self.ratios else None


def failed_row(key: str, section: str, measure: str, unit: str, goal: str, why: str) -> Row:
    """A row whose measurement broke: shown, never silently left out. A goal
    on the value says so: "value <= 1.0" (else it is on the ratio)."""
    on, _, on_value = goal.partition("value ")
    if on == "" and on_value:
        return Row(key, section, measure, None, unit, goal=on_value, goal_on="value",
                   note=f"not measured: {why}")  # fmt: skip
    return Row(key, section, measure, None, unit, goal=goal, note=f"not measured: {why}")


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


# --------------------------------------------------------------------------- pairs and spread


def paired_ratios(runs: dict[str, list[float]]) -> list[float]:
    """value / peer per round, from a row's `runs` (see Row.runs); [] when
    the runs are not two paired arms."""
    arms = list(runs.values())
    if len(arms) != 2 or len(arms[0]) != len(arms[1]):
        return []
    return [v / p for v, p in zip(arms[0], arms[1], strict=True) if p]


def steady(ratios: list[float], limit: float = SPREAD_LIMIT) -> bool:
    """Every ratio within `limit` of their median, either way."""
    mid = median(ratios)
    return bool(ratios) and all(abs(r / mid - 1) <= limit for r in ratios)


@dataclass
class Pairs:
    """Paired runs of two arms: value[i] and peer[i] ran back to back."""

    value: list[float] = field(default_factory=list)
    peer: list[float] = field(default_factory=list)
    window: int = 0  # how many of the last pairs the row reports

    def last(self) -> tuple[list[float], list[float]]:
        n = self.window or len(self.value)
        return self.value[-n:], self.peer[-n:]

    @property
    def ratios(self) -> list[float]:
        vs, ps = self.last()
        return [v / p for v, p in zip(vs, ps, strict=True) if p]

    def row(
        self,
        key: str,
        section: str,
        measure: str,
        unit: str,
        peer_label: str,
        names: tuple[str, str],
        **kw: Any,
    ) -> Row:
        """The table row: medians of the window, its paired ratios, every run kept."""
        vs, ps = self.last()
        return Row(
            key, section, measure, median(vs), unit, median(ps), peer_label,
            runs={names[0]: self.value, names[1]: self.peer},
            ratios=self.ratios, pairs_run=len(self.value), **kw,
        )  # fmt: skip


def paired(
    value: Callable[[], float],
    peer: Callable[[], float],
    pairs: int,
    extra: int,
    deadline: float | None = None,
) -> Pairs:
    """`pairs` rounds of both arms, who goes first alternating; then, while
    the last `pairs` ratios are not steady, one more round, at most `extra`
    more (and none after `deadline`, a time.monotonic() value). The window
    slides: a burst of the neighbours' load leaves it, it is not averaged in."""
    out = Pairs(window=pairs)
    for r in range(pairs + extra):
        if r >= pairs and (steady(out.ratios) or (deadline and time.monotonic() > deadline)):
            break
        if r >= pairs:
            log(f"spread {min(out.ratios):.2f}-{max(out.ratios):.2f} is wider than "
                f"±{SPREAD_LIMIT:.0%}: one more pair")  # fmt: skip
        if r % 2 == 0:
            out.value.append(value())
            out.peer.append(peer())
        else:
            out.peer.append(peer())
            out.value.append(value())
    return out
