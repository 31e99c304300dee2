"""App rows (free-form dicts) through the sinks' column path
(reports/app_rows.py): events.jsonl lines byte for byte json's, and
events.parquet's app columns as the row-by-row reading gives them."""

from __future__ import annotations

import json
from typing import Any

import polars as pl
from polars.testing import assert_frame_equal

from reports.app_rows import app_groups, json_lines
from reports.tables import _app_frame, _group_frame


def _row(**kw: Any) -> dict[str, Any]:
    return {"ts": 1_000, "src": "app", "type": "connect", "conn": None, **kw}


APP: list[tuple[int, dict[str, Any]]] = [
    (0, _row(actor="client", pid=200, fd=3, wall=1764540000.25, level="info", t=0.5)),
    (2, _row(actor="client", pid=200, fd=None, wall=12.0, level="warn", t=1e-05)),
    (3, _row(actor="clïent", pid=201, fd=4, wall=1e16, level="info", t=2.0)),
    (5, _row(actor="client", pid=202, fd=5, wall=2.5e-05, level='in"fo\n', t=None)),
    # Misfits: a str pid (all rows alike: into `fields`), a bool fd.
    (6, _row(pid="200", fd=True, t=3)),
    (7, _row(pid="201", fd=False, t=4)),
    # A misfit beside a null, a nested value, a str t, a huge int, NaN: row by row.
    (8, _row(laddr=5, t=0.1)),
    (9, _row(laddr=None, t=0.2)),
    (10, _row(extra={"a": [1, 2]}, t=0.3)),
    (11, _row(t="soon")),
    (12, _row(big=1 << 70, t=0.4)),
    (13, _row(rate=float("nan"), t=0.5)),
    (14, {"ts": 7, "src": "app", "type": "", "conn": 9}),
]


def test_lines_are_what_json_writes() -> None:
    groups = app_groups(APP)
    assert sum(g.frame is not None for g in groups) >= 3
    got = json_lines(APP, groups, lambda r: json.dumps(r, separators=(",", ":"))).sort("pos")
    want = [json.dumps(r, separators=(",", ":")) for _, r in APP]
    assert want == got["line"].to_list()
    assert [p for p, _ in APP] == got["pos"].to_list()


def test_parquet_columns_are_the_row_by_row_ones() -> None:
    groups = app_groups(APP)
    got = pl.concat([_group_frame(APP, g) for g in groups], how="diagonal_relaxed")
    want = _app_frame(APP)
    got = got.select([pl.col(k).cast(t) for k, t in want.schema.items() if k in got.columns])
    want = want.select(got.columns)
    assert_frame_equal(want, got.sort("pos"))
    by_pos = dict(zip(got["pos"].to_list(), got.to_dicts(), strict=True))
    assert by_pos[6]["pid"] is None
    assert json.loads(by_pos[6]["fields"]) == {"pid": "200", "fd": True}
    assert by_pos[0]["pid"] == 200 and json.loads(by_pos[0]["fields"]) == {
        "wall": 1764540000.25,
        "level": "info",
    }
    assert by_pos[8]["laddr"] is None and json.loads(by_pos[8]["fields"]) == {"laddr": 5}
    assert by_pos[9]["fields"] is None
