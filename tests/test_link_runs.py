"""The two-host scenarios end to end: real hosts, a real link, real probes;
each passes the expectations its file states (numbers from the kernel's
rules, not from our code) and leaves nothing behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pyroute2 import netns

from lab.netns import PREFIX
from lab.run import LabRun, RunOptions
from lab.scenario import find
from reports import build_reports

pytestmark = [pytest.mark.root, pytest.mark.bpf, pytest.mark.netns, pytest.mark.slow]


def run(name: str, runs_dir: Path) -> tuple[Path, dict]:  # type: ignore[type-arg]
    run_dir = LabRun(find(name), RunOptions(runs_dir=runs_dir, view="quiet")).execute()
    summary = build_reports(run_dir)
    failed = [e for e in summary["expectations"] if not e["held"]]
    assert failed == [], summary["diagnosis"]
    assert not [n for n in netns.listnetns() if n.startswith(f"{PREFIX}{os.getpid()}-")]
    return run_dir, summary


def test_handshake_on_loopback_and_across_the_link(tmp_path: Path) -> None:
    run_dir, summary = run("handshake", tmp_path)
    rows = [json.loads(line) for line in open(run_dir / "snapshots.jsonl")]
    link = {r["host"] for r in rows if r["kind"] == "established" and r["pmtu"] == 1500}
    assert link == {"a", "b"}  # both ends of the link were seen, each in its own host
    assert any("1460" in line for line in summary["diagnosis"])


def test_keepalive_gives_up_on_a_vanished_peer(tmp_path: Path) -> None:
    run_dir, summary = run("keepalive", tmp_path)
    rows = [json.loads(line) for line in open(run_dir / "snapshots.jsonl")]
    probes = [r["probes"] for r in rows if r["kind"] == "sample" and r["host"] == "a"]
    climbing = [p for i, p in enumerate(probes) if p and (i == 0 or p != probes[i - 1])]
    assert climbing == [1, 2, 3, 4, 5]
    meta = json.loads((run_dir / "run.json").read_text())
    drops = meta["lab"]["link"]["drops"]
    assert drops["a"]["dropped"] >= 5  # the five probes, lost on the way to b
