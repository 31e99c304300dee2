"""A chunk's app rows (free-form dicts, correlator/rows.py) as polars frames
for the sinks: events.jsonl's lines and events.parquet's columns.

Rows with the same keys in the same order (an actor's records of one event,
as a rule) form a group; a group whose every key holds one plain type
(str, int in 64 bits, finite float, bool; or None) becomes a frame, taken a
key at a time. polars' JSON of such a frame is json's, but for non-ASCII,
DEL and floats json writes with an exponent: lines with those (and any
other group) are encoded from their dicts, so the text stays json's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import polars as pl

_TYPES: dict[type, pl.DataType] = {
    str: pl.String(),
    int: pl.Int64(),
    float: pl.Float64(),
    bool: pl.Boolean(),
}
_INT64 = (-(1 << 63), (1 << 63) - 1)
_NONE = type(None)


@dataclass
class AppGroup:
    keys: tuple[str, ...]
    at: list[int]  # the rows' indexes in the chunk's app list
    frame: pl.DataFrame | None  # the keys' columns; None: not plain, use the dicts


def _dtype(vals: list[Any]) -> pl.DataType | None:
    """The column type of one key's values, or None if they are not plain."""
    types = set(map(type, vals))
    has_none = _NONE in types
    types.discard(_NONE)
    if not types:
        return pl.Null()
    if len(types) > 1:
        return None
    t = types.pop()
    dt = _TYPES.get(t)
    if dt is None or t is str:
        return dt
    vs = [v for v in vals if v is not None] if has_none else vals
    if t is int and not (_INT64[0] <= min(vs) and max(vs) <= _INT64[1]):
        return None
    if t is float and not all(map(math.isfinite, vs)):
        return None
    return dt


def _frame(keys: tuple[str, ...], rows: list[dict[str, Any]]) -> pl.DataFrame | None:
    if not keys or not all(type(k) is str for k in keys):
        return None
    series = []
    for k in keys:
        # A key's column by one C-level pass: transposing the rows (a tuple
        # per row, then one per key) cost twice as much.
        vals = list(map(itemgetter(k), rows))
        dt = _dtype(vals)
        if dt is None:
            return None
        series.append(pl.Series(k, vals, dtype=dt))
    return pl.DataFrame(series)


def app_groups(app: list[tuple[int, dict[str, Any]]]) -> list[AppGroup]:
    at: dict[tuple[Any, ...], list[int]] = {}
    for i, (_, row) in enumerate(app):
        at.setdefault(tuple(row), []).append(i)
    return [AppGroup(keys, idx, _frame(keys, [app[i][1] for i in idx])) for keys, idx in at.items()]


def odd_json(line: pl.Expr) -> pl.Expr:
    """Lines where polars' JSON of plain values may differ from json's (or
    orjson's): non-ASCII, DEL, a float with an exponent either way. A false
    alarm (say "e-" in a string) only costs time."""
    return (
        line.str.contains(r"[^\x00-\x7e]")
        | line.str.contains("0.0000", literal=True)
        | line.str.contains(r"[0-9][eE][-+]?[0-9]")
    )


def json_lines(
    app: list[tuple[int, dict[str, Any]]],
    groups: list[AppGroup],
    encode: Callable[[dict[str, Any]], str],
) -> pl.DataFrame:
    """(pos, line): each app row as json writes it (`encode`: from its dict,
    for the rows polars cannot write)."""
    parts = []
    for g in groups:
        pos = pl.Series("pos", [app[i][0] for i in g.at], dtype=pl.Int64)
        if g.frame is None:
            lines = pl.Series("line", [encode(app[i][1]) for i in g.at], dtype=pl.String)
        else:
            lines = g.frame.select(pl.struct(g.keys).struct.json_encode().alias("line"))["line"]
            odd = lines.to_frame().with_row_index("j").filter(odd_json(pl.col("line")))["j"]
            if len(odd):
                fixed = [encode(app[g.at[j]][1]) for j in odd.to_list()]
                lines = lines.scatter(odd, pl.Series(fixed, dtype=pl.String))
        parts.append(pl.DataFrame([pos, lines]))
    return pl.concat(parts) if parts else pl.DataFrame(schema={"pos": pl.Int64, "line": pl.String})
