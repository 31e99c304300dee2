"""The "expected" mini-language: simple comparisons on named counts.

A scenario's `expected` mirrors the tree of `summary["counts"]`; each leaf
is a comparison such as ">=100", ">0", "==0", "<5" or a bare number
(meaning equal). Several comparisons on one count are joined with "and":
">=100 and <=30000". A count the run never produced is 0, so
{"errors": {"EADDRNOTAVAIL": "==0"}} holds for a run without that error.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from typing import Any

from correlator.errors import ExpectationError

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
}
_TERM = re.compile(r"^\s*(>=|<=|==|!=|>|<)?\s*(-?\d+(?:\.\d+)?)\s*$")


def parse_expectation(expr: object) -> list[tuple[str, float]]:
    """Parse one leaf into (operator, number) pairs; raise ExpectationError."""
    if isinstance(expr, bool) or not isinstance(expr, str | int | float):
        raise ExpectationError(
            f'expectation {expr!r} is not a comparison: write e.g. ">=100", ">0" or "==0"'
        )
    if isinstance(expr, int | float):
        return [("==", float(expr))]
    terms = []
    for part in re.split(r"\band\b", expr):
        m = _TERM.match(part)
        if not m:
            raise ExpectationError(
                f'expectation {expr!r} is not a comparison: write e.g. ">=100", '
                '">0", "==0" or ">=10 and <20"'
            )
        terms.append((m.group(1) or "==", float(m.group(2))))
    return terms


def flatten(expected: object, prefix: str = "") -> list[tuple[str, object]]:
    """The leaves of an expected tree as (dotted path, expression)."""
    if not isinstance(expected, dict):
        if not prefix:
            raise ExpectationError('"expected" must be a mapping of count names to comparisons')
        return [(prefix, expected)]
    out: list[tuple[str, object]] = []
    for key, value in expected.items():
        out.extend(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def validate(expected: object) -> None:
    """Raise ExpectationError when any leaf is malformed (for scenario loaders)."""
    for _, expr in flatten(expected):
        parse_expectation(expr)


def lookup(counts: dict[str, Any], path: str) -> float | None:
    """The number at a dotted path; 0 for a missing leaf, None for a non-number."""
    node: Any = counts
    for key in path.split("."):
        if node == 0:
            return 0  # a section the run never produced counts nothing
        if not isinstance(node, dict):
            return None
        node = node.get(key, 0)
    if isinstance(node, bool) or not isinstance(node, int | float):
        return None
    return node


def check(
    expected: object,
    counts: dict[str, Any],
    unknown: Callable[[str], str | None] | None = None,
) -> list[dict[str, Any]]:
    """Evaluate every leaf against the counts; a bad leaf is reported, not raised.

    Each entry's "status" is "held", "failed" or "unknown"; "held" is True,
    False or None (unknown). `unknown(path)` gives the reason a count cannot
    be judged (the data it needs is missing), or None when it can.
    """
    if not expected:
        return []
    results = []
    for path, expr in flatten(expected):
        actual = lookup(counts, path)
        entry: dict[str, Any] = {"path": path, "expect": expr, "actual": actual}
        try:
            terms = parse_expectation(expr)
        except ExpectationError as e:
            entry.update(status="failed", held=False, error=str(e))
            results.append(entry)
            continue
        why = unknown(path) if unknown else None
        if actual is None:
            entry.update(status="failed", held=False, error=f"{path} is not a count in this report")
        elif why:
            entry.update(status="unknown", held=None, why=why)
        else:
            held = all(_OPS[op](actual, num) for op, num in terms)
            entry.update(status="held" if held else "failed", held=held)
        results.append(entry)
    return results


def overall(results: list[dict[str, Any]]) -> str | None:
    """One word for them all: "failed" if any failed, else "unknown" if any
    is unknown, else "held"; None without expectations."""
    if not results:
        return None
    statuses = {e["status"] for e in results}
    for word in ("failed", "unknown"):
        if word in statuses:
            return word
    return "held"
