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
    rows = [json.loads(line) for line in open(run_dir / "connections.jsonl")]
    conns = [r for r in rows if r["kind"] == "connection"]
    across = {(r["owner"]["actor"], r["host"], r["peer_host"]) for r in conns
              if r["raddr"].startswith("198.18.")}
    assert across == {("client-link", "a", "b"), ("server", "b", "a")}
    local = {(r["host"], r["peer_host"]) for r in conns if r["raddr"] == "127.0.0.1"}
    assert local == {("b", "b")}
    # Each connection stayed up 0.6 s: the 4 Hz snapshots saw every one.
    assert len(conns) == 12 and all("tcp_info" in r for r in conns)
    assert {r["tcp_info"]["advmss"] for r in conns if r["host"] != r["peer_host"]} == {1448}
    assert {r["tcp_info"]["advmss"] for r in conns if r["host"] == r["peer_host"]} == {65483}


def test_keepalive_gives_up_on_a_vanished_peer(tmp_path: Path) -> None:
    run_dir, summary = run("keepalive", tmp_path)
    rows = [json.loads(line) for line in open(run_dir / "snapshots.jsonl")]
    probes = [r["probes"] for r in rows if r["kind"] == "sample" and r["host"] == "a"]
    climbing = [p for i, p in enumerate(probes) if p and (i == 0 or p != probes[i - 1])]
    assert climbing == [1, 2, 3, 4, 5]
    meta = json.loads((run_dir / "run.json").read_text())
    drops = meta["lab"]["link"]["drops"]
    assert drops["a"]["dropped"] >= 5  # the five probes, lost on the way to b
