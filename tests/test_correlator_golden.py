"""The correlator's outputs on real recordings equal the goldens.

tests/data/golden/<scenario>/ holds a real `tcplab run` recording of every
scenario (bomb at full size, multiplex shrunk to 300 connections: its
scenario.toml) and what the one-pass engine made of it before the columnar
engine replaced it (tests/data/golden/make_golden.py says how they were
made). A rewrite of the correlator must give the same connections, outcomes,
counts, coverage, losses and diagnosis for the same recording.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from correlator.correlate import CorrelatorConfig
from reports.build import build_reports

GOLDEN = Path(__file__).parent / "data" / "golden"
SCENARIOS = ("echo", "leak", "bomb", "multiplex")


def _rebuild(tmp_path: Path, scenario: str, chunk: int) -> tuple[dict[str, Any], Path]:
    run_dir = tmp_path / scenario
    run_dir.mkdir()
    shutil.copy(GOLDEN / scenario / "run.json", run_dir / "run.json")
    with (
        gzip.open(GOLDEN / scenario / "recording.msgpack.gz", "rb") as f,
        open(run_dir / "recording.msgpack", "wb") as out,
    ):
        shutil.copyfileobj(f, out)
    return build_reports(run_dir, CorrelatorConfig(chunk_items=chunk)), run_dir


# The default chunk holds a whole small run; 3000 items cut every run into
# many chunks, so lives, owners and rows cross chunk boundaries.
CHUNKS = (CorrelatorConfig().chunk_items, 3000)


@pytest.fixture(
    scope="module",
    params=[(s, c) for s in SCENARIOS for c in CHUNKS],
    ids=[f"{s}-chunk{c}" for s in SCENARIOS for c in CHUNKS],
)
def rebuilt(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    scenario, chunk = request.param
    summary, run_dir = _rebuild(tmp_path_factory.mktemp("golden"), scenario, chunk)
    golden = json.loads((GOLDEN / scenario / "golden.json").read_text())
    return scenario, summary, run_dir, golden


def test_connections_equal_the_golden(rebuilt: Any) -> None:
    """Every lifecycle, field by field: ids, roles, owners, states, outcomes."""
    scenario, _, run_dir, _ = rebuilt
    with gzip.open(GOLDEN / scenario / "connections.jsonl.gz", "rt") as f:
        want = [json.loads(line) for line in f]
    got = sorted(
        (json.loads(line) for line in (run_dir / "connections.jsonl").open()),
        key=lambda c: c["id"],
    )
    assert len(want) == len(got)
    for w, g in zip(want, got, strict=True):
        # One row at a time, so a failure shows the first connection that differs.
        assert w == g, f"{scenario}: connection {w['id']} differs"


@pytest.mark.parametrize("part", ["counts", "coverage", "losses"])
def test_figures_equal_the_golden(rebuilt: Any, part: str) -> None:
    """Counts (outcomes, errors, accept and epoll figures, phases), coverage, losses."""
    scenario, summary, _, golden = rebuilt
    got = {k: v for k, v in summary[part].items() if k not in ("coverage", "recording")}
    assert json.loads(json.dumps(golden[part])) == json.loads(json.dumps(got)), scenario


def test_diagnosis_equals_the_golden(rebuilt: Any) -> None:
    """The sentences correlator/diagnosis.py builds from the correlator's data."""
    scenario, summary, _, golden = rebuilt
    assert golden["diagnosis"] == summary["diagnosis"], scenario


def test_timeline_equals_the_golden_byte_for_byte(rebuilt: Any) -> None:
    """events.jsonl (its digest: the file is tens of MB) and the live-state
    samples from the transitions, as the one-pass engine wrote them."""
    scenario, summary, run_dir, golden = rebuilt
    digest = hashlib.sha256((run_dir / "events.jsonl").read_bytes()).hexdigest()
    assert golden["events_jsonl_sha256"] == digest, scenario
    assert golden["kernel_states"] == summary["plots"]["kernel_states"], scenario


def test_parquet_holds_the_same_rows(rebuilt: Any) -> None:
    """events.parquet and connections.parquet: one row per line of the JSON
    Lines files, the same values in the columns they share."""
    import polars as pl

    scenario, _, run_dir, _ = rebuilt
    events = pl.read_parquet(run_dir / "events.parquet")
    lines = [json.loads(line) for line in (run_dir / "events.jsonl").open()]
    assert len(lines) == len(events), scenario
    for col in ("ts", "type", "conn", "phase"):
        assert [r.get(col) for r in lines] == events[col].to_list(), (scenario, col)
    owners = [(r.get("owner") or {}).get("pid") for r in lines]
    assert owners == events["owner_pid"].to_list(), scenario
    conns = pl.read_parquet(run_dir / "connections.parquet")
    rows = [json.loads(line) for line in (run_dir / "connections.jsonl").open()]
    assert [r["id"] for r in rows] == conns["id"].to_list(), scenario
    assert [r["outcome"] for r in rows] == conns["outcome"].to_list(), scenario
    assert [len(r["states"]) for r in rows] == conns["states"].list.len().to_list(), scenario
