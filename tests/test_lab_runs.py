"""Each scenario end to end: real probes, real actors in a real lab namespace,
and the kernel signature the scenario promises, read from its summary."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from lab_helpers import LiveRun, wait_nothing_left
from pyroute2 import netns

from lab.netns import PREFIX
from lab.run import LabRun, RunOptions
from lab.scenario import find
from reports import build_reports

pytestmark = [pytest.mark.root, pytest.mark.bpf, pytest.mark.netns, pytest.mark.slow]


def run_scenario(name: str, runs_dir: Path) -> tuple[Path, dict[str, Any]]:
    run_dir = LabRun(find(name), RunOptions(runs_dir=runs_dir, view="quiet")).execute()
    return run_dir, build_reports(run_dir)


def assert_clean_run(run_dir: Path, summary: dict[str, Any]) -> None:
    """Every expectation held, nothing lost, no actor crashed, nothing left behind."""
    meta = json.loads((run_dir / "run.json").read_text())
    failed = [e for e in summary["expectations"] if not e["held"]]
    assert failed == [], summary["diagnosis"]
    assert not any(a["crashed"] for a in meta["actors"].values()), meta["actors"]
    assert meta["bus"]["gaps"] == [] and meta["bus"]["rejected"] == {}
    assert all(s["complete"] for s in meta["bus"]["senders"].values()), meta["bus"]["senders"]
    assert summary["counts"]["lost"]["kernel_drops"] == 0
    assert not [n for n in netns.listnetns() if n.startswith(f"{PREFIX}{os.getpid()}-")]
    for name in ("events.jsonl", "connections.jsonl", "summary.json", "report.html", "trace.json"):
        assert (run_dir / name).stat().st_size > 0, name


def test_echo_full_lifecycle_on_both_sides(tmp_path: Path) -> None:
    """Every client connection is matched to its kernel transitions on both sides."""
    run_dir, summary = run_scenario("echo", tmp_path)
    assert_clean_run(run_dir, summary)
    lifecycles = [json.loads(line) for line in open(run_dir / "connections.jsonl")]
    conns = [c for c in lifecycles if c["kind"] == "connection"]
    client = [c for c in conns if c["owner"]["actor"] == "client"]
    server = [c for c in conns if c["owner"]["actor"] == "server"]
    assert len(client) == 20 and len(server) == 20
    assert {(*(s["state"] for s in c["states"]), c["last_state"]) for c in client} == {
        ("SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "CLOSE")
    }
    assert {(*(s["state"] for s in c["states"]), c["last_state"]) for c in server} == {
        ("SYN_RECV", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSE")
    }
    # Both ends of each connection: the client's local port is the server's peer port.
    assert sorted(c["lport"] for c in client) == sorted(c["rport"] for c in server)


def test_bomb_exhausts_ports_and_the_pool_does_not(tmp_path: Path) -> None:
    """TIME_WAIT climbs to the port range, connect() fails with EADDRNOTAVAIL,
    and the pooled phase opens no connection and meets no such failure."""
    run_dir, summary = run_scenario("bomb", tmp_path)
    assert_clean_run(run_dir, summary)
    counts = summary["counts"]
    assert counts["states_peak"]["TIME_WAIT"] >= 3000
    assert counts["errors"]["EADDRNOTAVAIL"] > 0
    assert counts["phases"]["pooled"].get("errors", {}).get("EADDRNOTAVAIL", 0) == 0


def test_leak_close_wait_owned_by_leaker_and_emfile(tmp_path: Path) -> None:
    run_dir, summary = run_scenario("leak", tmp_path)
    assert_clean_run(run_dir, summary)
    counts = summary["counts"]
    assert counts["outcomes"]["stuck_close_wait"] >= 50
    assert counts["accept"]["EMFILE"] > 0
    assert any("CLOSE_WAIT" in line and "leaker" in line for line in summary["diagnosis"])


def test_multiplex_holds_ten_thousand_on_epoll(tmp_path: Path) -> None:
    run_dir, summary = run_scenario("multiplex", tmp_path)
    assert_clean_run(run_dir, summary)
    assert summary["counts"]["states_peak"]["ESTABLISHED"] >= 19000
    assert summary["counts"]["epoll"]["max_ready"] > 1


def test_ctrl_c_mid_run_records_and_leaves_nothing_behind(tmp_path: Path) -> None:
    """SIGINT during a phase: exit 130, the run directory is complete, and no
    process, namespace, BPF program or bus directory of the run remains."""
    run = LiveRun("bomb", "--runs-dir", str(tmp_path))
    run.wait_phase("bomb")
    programs = run.wait_programs()
    assert programs, "the probe process held no BPF program"
    run.proc.send_signal(signal.SIGINT)
    code, out, err = run.finish()
    assert code == 130, err
    (run_dir,) = tmp_path.iterdir()
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["interrupted"] is True, out
    assert (run_dir / "recording.msgpack").stat().st_size > 0
    assert (run_dir / "report.html").exists(), err
    assert wait_nothing_left(run.proc.pid, set(run.pids.values()), programs) == []
