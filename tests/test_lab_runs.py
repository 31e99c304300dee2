"""Each scenario end to end: real probes, real actors in a real lab namespace,
and the kernel signature the scenario promises, read from its summary."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import netns

from lab.netns import PREFIX
from lab.run import LabRun, RunOptions
from lab.scenario import find
from reports import build_reports

pytestmark = [pytest.mark.root, pytest.mark.bpf, pytest.mark.netns, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent


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


def _probe_programs() -> set[int]:
    """Ids of loaded BPF programs named like ours (tp_*: tracepoint handlers).

    CI runs tests one at a time, so a probe program loaded during the test
    and still there after it is ours."""
    out = subprocess.run(
        ["bpftool", "-j", "prog", "list"], capture_output=True, text=True, check=True
    )
    return {p["id"] for p in json.loads(out.stdout) if str(p.get("name", "")).startswith("tp_")}


def test_ctrl_c_mid_run_records_and_leaves_nothing_behind(tmp_path: Path) -> None:
    """SIGINT during a phase: the run directory is complete, and no process,
    namespace, BPF program or bus socket of the run remains."""
    before = _probe_programs()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orchestrator",
            "run",
            "bomb",
            "--json",
            "--runs-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    # The JSON view prints a status line a second: interrupt once the bomb runs.
    for line in proc.stdout:
        if line.startswith("{") and json.loads(line).get("phase") == "bomb":
            break
    else:
        pytest.fail("the bomb phase never started")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    (run_dir,) = tmp_path.iterdir()
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["interrupted"] is True, out
    assert (run_dir / "recording.msgpack").stat().st_size > 0
    assert (run_dir / "report.html").exists(), out
    for actor in meta["actors"].values():
        with pytest.raises(ProcessLookupError):
            os.kill(actor["pid"], 0)
    assert not [n for n in netns.listnetns() if n.startswith(f"{PREFIX}{proc.pid}-")]
    assert _probe_programs() <= before
    assert not Path(meta["bus_dir"]).exists()
