"""The two-host scenarios end to end: real hosts, a real link, real probes;
each passes the expectations its file states (numbers from the kernel's
rules, not from our code) and leaves nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lab_helpers import tcplab
from pyroute2 import netns

pytestmark = [pytest.mark.root, pytest.mark.bpf, pytest.mark.netns, pytest.mark.slow]

Runs = dict[str, tuple[Path, dict]]  # type: ignore[type-arg]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """`tcplab run handshake keepalive`, the real command line: exit 0 means
    every expectation of both held; then nothing of them is left."""
    runs_dir = tmp_path_factory.mktemp("runs")
    out = tcplab(
        "run", "handshake", "keepalive", "--json", "--runs-dir", str(runs_dir), timeout=600
    )
    finals = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    finals = [r for r in finals if "exit_code" in r]
    assert out.returncode == 0, [r["summary"]["diagnosis"] for r in finals] or out.stderr
    runs = {r["scenario"]: (Path(r["run_dir"]), r["summary"]) for r in finals}
    assert sorted(runs) == ["handshake", "keepalive"]
    for run_dir, _ in runs.values():
        meta = json.loads((run_dir / "run.json").read_text())
        made = [h["namespace"] for h in meta["lab"]["hosts"].values()]
        assert len(made) == 2 and not set(made) & set(netns.listnetns())
    return runs


def test_handshake_on_loopback_and_across_the_link(runs: Runs) -> None:
    run_dir, summary = runs["handshake"]
    assert summary["expectations"] and all(e["held"] for e in summary["expectations"])
    rows = [json.loads(line) for line in open(run_dir / "snapshots.jsonl")]
    link = {r["host"] for r in rows if r["kind"] == "established" and r["pmtu"] == 1500}
    assert link == {"a", "b"}  # both ends of the link were seen, each in its own host
    assert any("1460" in line for line in summary["diagnosis"])
    page = (run_dir / "report.html").read_text()
    assert "<h2>Handshakes</h2>" in page and "[S] mss 1460,sackOK,TS,nop,wscale" in page
    rows = [json.loads(line) for line in open(run_dir / "connections.jsonl")]
    conns = [r for r in rows if r["kind"] == "connection"]
    across = {
        (r["owner"]["actor"], r["host"], r["peer_host"])
        for r in conns
        if r["raddr"].startswith("198.18.")
    }
    assert across == {("client-link", "a", "b"), ("server", "b", "a")}
    local = {(r["host"], r["peer_host"]) for r in conns if r["raddr"] == "127.0.0.1"}
    assert local == {("b", "b")}
    # Each connection stayed up 1.5 s: the 4 Hz snapshots saw every one.
    assert len(conns) == 12 and all("tcp_info" in r for r in conns)
    assert {r["tcp_info"]["advmss"] for r in conns if r["host"] != r["peer_host"]} == {1448}
    assert {r["tcp_info"]["advmss"] for r in conns if r["host"] == r["peer_host"]} == {65483}


def test_keepalive_gives_up_on_a_vanished_peer(runs: Runs) -> None:
    run_dir, summary = runs["keepalive"]
    assert summary["expectations"] and all(e["held"] for e in summary["expectations"])
    rows = [json.loads(line) for line in open(run_dir / "snapshots.jsonl")]
    probes = [r["probes"] for r in rows if r["kind"] == "sample" and r["host"] == "a"]
    climbing = [p for i, p in enumerate(probes) if p and (i == 0 or p != probes[i - 1])]
    assert climbing == [1, 2, 3, 4, 5]
    page = (run_dir / "report.html").read_text()
    assert "<h2>Keepalive</h2>" in page and "ghosts" in page
    meta = json.loads((run_dir / "run.json").read_text())
    drops = meta["lab"]["link"]["drops"]
    assert drops["a"]["dropped"] >= 5  # the five probes, lost on the way to b
