"""The correlator on real recordings made by `tcplab run` on this machine.

tests/data/correlator/<scenario>/ holds a run's recording.msgpack and
run.json as the orchestrator wrote them. Each check compares the correlated
kernel view with an independent one: the observer's sock_diag counts, the
actors' own progress counters, their logs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from reports import build_reports

DATA = Path(__file__).parent / "data" / "correlator"


def rebuild(tmp_path: Path, scenario: str) -> tuple[dict[str, Any], Path]:
    run_dir = tmp_path / scenario
    shutil.copytree(DATA / scenario, run_dir)
    return build_reports(run_dir), run_dir


def test_real_echo_run_is_fully_correlated(tmp_path: Path) -> None:
    """Every client session shows up as one active closer in TIME_WAIT and
    one cleanly closed server socket; every app connection and every state
    event of the lab is joined to its owner."""
    s, run_dir = rebuild(tmp_path, "echo")
    sessions = s["counts"]["app"]["connect"]
    progress = json.loads((run_dir / "run.json").read_text())["progress"]
    assert progress["client"]["sessions"] == sessions
    outcomes = {k: v for k, v in s["counts"]["outcomes"].items() if v}
    assert {"time_wait": sessions, "clean": sessions} == outcomes
    assert s["counts"]["states_peak"]["TIME_WAIT"] == sessions
    cov = s["coverage"]
    assert 100.0 == cov["app_connections_pct"]
    assert 100.0 == cov["by_probe"]["tcp_state"]["pct"]
    assert s["expectations_held"] is True


def test_real_echo_run_attributes_peer_context_transitions(tmp_path: Path) -> None:
    """On loopback the server child's LISTEN -> SYN_RECV runs on the client's
    CPU context: cpu_pid is the client, the owner joined is the server."""
    s, run_dir = rebuild(tmp_path, "echo")
    pids = {name: a["pid"] for name, a in s["actors"].items()}
    rows = [json.loads(line) for line in (run_dir / "events.jsonl").open()]
    syn_recv = [r for r in rows if r["type"] == "tcp_state" and r["new"] == "SYN_RECV"]
    assert syn_recv
    for r in syn_recv:
        assert (pids["server"], "accept4", False) == (
            r["owner"]["pid"],
            r["owner"]["via"],
            r["cpu_is_owner"],
        )
    assert any(r["cpu_pid"] == pids["client"] for r in syn_recv)


def test_real_leak_run_finds_the_leak_and_its_peers(tmp_path: Path) -> None:
    """The leaker's accepted-and-never-closed sockets are stuck in CLOSE_WAIT
    (as many as it says it leaked), the ones it could not accept wait in its
    queue, and together they match the observer's CLOSE_WAIT peak; every
    client sits in FIN_WAIT2 as the observer saw."""
    s, run_dir = rebuild(tmp_path, "leak")
    meta = json.loads((run_dir / "run.json").read_text())
    leaked = meta["progress"]["leaker"]["leaked"]
    o = s["counts"]["outcomes"]
    peak = s["counts"]["states_peak"]
    assert leaked == o["stuck_close_wait"]
    assert peak["CLOSE_WAIT"] == o["stuck_close_wait"] + o["never_accepted"]
    assert peak["FIN_WAIT2"] == o["stuck_fin_wait2"]
    assert meta["progress"]["client"]["sessions"] == o["stuck_fin_wait2"]
    assert s["counts"]["accept"]["EMFILE"] == s["counts"]["errors"]["EMFILE"] > 0
    leaker = meta["actors"]["leaker"]["pid"]
    assert s["diagnosis"][0] == (
        f"{leaked} sockets stuck in CLOSE_WAIT, owned by leaker pid {leaker}: accepted and "
        f"never closed; their peers wait in FIN_WAIT_2 ({leaked} of them)."
    )
    assert 100.0 == s["coverage"]["kernel_events_pct"]
    assert s["expectations_held"] is True


@pytest.mark.parametrize("scenario", ["echo", "leak"])
def test_real_runs_lose_nothing_in_the_recording(tmp_path: Path, scenario: str) -> None:
    """The recorded frames all decode, every sender is complete."""
    s, _ = rebuild(tmp_path, scenario)
    rec = s["losses"]["recording"]
    assert (0, 0) == (rec["corrupt_frames"], rec["gap_count"])
    assert all(v["complete"] for v in rec["senders"].values())
