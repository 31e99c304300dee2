"""Fault injection on real runs: kill -9 of each process type mid-run,
Ctrl-C at each phase boundary, SIGINT to an actor and to the probes, a
full disk under the run directory, a real actor failing. Each ends with the
documented exit code (README: "Exit codes"), a report that says what
happened where one can be written, and nothing left: processes,
namespaces, bus directories, and the BPF programs this run loaded (other
runs on the machine load their own: only ours are compared).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from lab_helpers import LiveRun, group_members, small_scenario, tcplab, wait_nothing_left

from bus.endpoints import BUS_DIR_PREFIX
from lab.exitcodes import Exit
from lab.netns import PREFIX
from lab.stale import sweep

pytestmark = [pytest.mark.root, pytest.mark.bpf, pytest.mark.netns, pytest.mark.slow]


def start(tmp_path: Path, **kw: Any) -> tuple[LiveRun, Path]:
    runs = tmp_path / "runs"
    return LiveRun(str(small_scenario(tmp_path, **kw)), "--runs-dir", str(runs)), runs


def run_meta(runs: Path) -> tuple[Path, dict[str, Any]]:
    (run_dir,) = runs.iterdir()
    return run_dir, json.loads((run_dir / "run.json").read_text())


def assert_clean_end(run: LiveRun) -> None:
    pids = set(run.pids.values())
    assert wait_nothing_left(run.proc.pid, pids, run.programs) == []


@pytest.mark.parametrize("victim", ["probes", "server"])
def test_kill_9_of_a_run_process_ends_with_3_and_a_report(tmp_path: Path, victim: str) -> None:
    """kill -9 of the probe process or of an actor mid-phase: the run notices,
    stops, records who died and when, reports, and exits 3."""
    run, runs = start(tmp_path, clients_s=5.0)
    status = run.wait_phase("clients")
    assert run.wait_programs()
    os.kill(status["actors"][victim]["pid"], signal.SIGKILL)
    killed_ns = time.monotonic_ns()
    code, out, err = run.finish()
    assert code == Exit.CRASHED, err
    run_dir, meta = run_meta(runs)
    dead = meta["actors"][victim]
    assert (dead["crashed"], dead["exit_code"]) == (True, -signal.SIGKILL)
    # The run stops at once when the kernel view is lost; an actor's death
    # is recorded and the run goes on to its end.
    phases = [p["name"] for p in meta["phases"]]
    assert phases == ["listen", "clients"]
    if victim == "probes":
        # The kernel view ended at the probes' last frame: before the kill
        # (the same CLOCK_MONOTONIC), not when the death was noticed.
        assert meta["started_mono_ns"] < dead["ended_mono_ns"] <= killed_ns
        assert killed_ns <= dead["reaped_mono_ns"]
        assert meta["phases"][-1]["end_mono_ns"] - dead["reaped_mono_ns"] < 2e9
        assert any("kernel view ended" in e for e in meta["errors"]), meta["errors"]
    assert any(victim in e for e in meta["errors"]), meta["errors"]
    said = "The kernel view ended" if victim == "probes" else f"Actor {victim} crashed"
    assert said in (run_dir / "report.html").read_text()
    assert f"! {victim}" not in out  # --json: the outcome is one JSON line
    assert run.result()["exit_code"] == Exit.CRASHED
    assert_clean_end(run)


def test_kill_9_of_the_orchestrator_leaves_nothing_after_the_next_start(tmp_path: Path) -> None:
    """The actors and probes stop by themselves (the kernel's parent-death
    signal); the namespace and bus directory go at the next start's sweep;
    `tcplab report` on what is left says what it can in one line."""
    run, runs = start(tmp_path, clients_s=5.0)
    run.wait_phase("clients")
    programs = run.wait_programs()
    assert programs
    run.proc.kill()
    run.proc.wait()
    pids = set(run.pids.values())
    # Processes and programs first: nothing but the kernel stops them now.
    stale = (PREFIX, str(Path(tempfile.gettempdir()) / BUS_DIR_PREFIX))
    left = wait_nothing_left(run.proc.pid, pids, programs, but=stale)
    # Its namespace and bus directory are left (none, if another tcplab on
    # the machine started meanwhile: its sweep took them).
    assert all(x.startswith(stale) for x in left), left
    swept = sweep()
    assert [x for x in left if x not in " ".join(swept)] == [], (left, swept)
    assert wait_nothing_left(run.proc.pid, pids, programs, timeout=1) == []
    (run_dir,) = runs.iterdir()
    out = tcplab("report", str(run_dir))
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) <= 1, out


# The boundaries a run goes through, as its --json view names them.
BOUNDARIES = ["attaching probes", "starting actors", "listen", "clients", "stopping"]


@pytest.mark.parametrize("phase", BOUNDARIES)
def test_ctrl_c_at_each_phase_boundary(tmp_path: Path, phase: str) -> None:
    """SIGINT as a phase begins: exit 130, run.json says interrupted, nothing
    starts afterwards, a report is written, nothing is left."""
    run, runs = start(tmp_path, clients_s=2.0)
    run.wait_phase(phase)
    run.proc.send_signal(signal.SIGINT)
    code, out, err = run.finish()
    assert code == Exit.INTERRUPTED, err
    run_dir, meta = run_meta(runs)
    assert meta["interrupted"] is True
    assert any(f"interrupted by SIGINT during {phase}" in e for e in meta["errors"]), meta
    started = set(meta["actors"])
    order = BOUNDARIES.index(phase)
    if order == 0:
        # Ctrl-C while the probes attach: no actor starts afterwards.
        assert started == {"probes"}
    if order <= 2:
        assert [p["name"] for p in meta["phases"]][order - 2 :] in ([], ["listen"])
    assert "The run was interrupted" in (run_dir / "report.html").read_text(), err
    assert run.result()["exit_code"] == Exit.INTERRUPTED
    assert_clean_end(run)


def test_ctrl_c_while_the_report_is_built(tmp_path: Path) -> None:
    """The run itself is whole; the line says how to build the report later."""
    for attempt in range(3):
        (tmp_path / str(attempt)).mkdir()
        run, runs = start(tmp_path / str(attempt), clients_s=0.5)
        run.wait_phase("building report…")
        run.proc.send_signal(signal.SIGINT)
        code, out, err = run.finish()
        run_dir, meta = run_meta(runs)
        assert code == Exit.INTERRUPTED, err
        assert "Traceback" not in err
        assert_clean_end(run)
        # Building takes seconds (the correlator and matplotlib load first), so
        # the signal sent on the line that announces it arrives while it runs;
        # on a loaded machine this process may read that line too late: again.
        if "interrupted between runs" not in err:
            break
    assert f"`tcplab report {run_dir}` builds it" in err


@pytest.mark.parametrize("victim", ["probes", "client"])
def test_sigint_to_a_run_process_is_a_crash(tmp_path: Path, victim: str) -> None:
    """A stray Ctrl-C to the probes or to an actor ends it cleanly, but
    before the run stopped it: recorded as crashed, exit 3."""
    run, runs = start(tmp_path, clients_s=5.0)
    status = run.wait_phase("clients")
    os.kill(status["actors"][victim]["pid"], signal.SIGINT)
    code, out, err = run.finish()
    assert code == Exit.CRASHED, err
    run_dir, meta = run_meta(runs)
    assert meta["actors"][victim]["crashed"] is True
    assert any(
        victim in e and "before the run stopped it" in e or "kernel view ended" in e
        for e in meta["errors"]
    ), meta["errors"]
    said = "The kernel view ended" if victim == "probes" else f"Actor {victim} crashed"
    assert said in (run_dir / "report.html").read_text()
    assert_clean_end(run)


def test_an_actor_that_fails_shows_its_last_log_lines(tmp_path: Path) -> None:
    """A second server on a taken port fails for real: exit 3, and the end
    of its log is in run.json, the terminal summary and report.html."""
    extra = '\n[[actors]]\nname = "rival"\nrole = "server"\nargs = ["--port", "{port}"]\n'
    path = small_scenario(tmp_path, extra=extra)
    runs = tmp_path / "runs"
    out = tcplab("run", str(path), "--runs-dir", str(runs))
    assert out.returncode == Exit.CRASHED, out
    run_dir, meta = run_meta(runs)
    rival = meta["actors"]["rival"]
    assert rival["crashed"] and rival["exit_code"] not in (0, None)
    assert any("Address already in use" in line for line in rival["last_lines"]), rival
    assert "! rival exited with code" in out.stdout
    assert "Address already in use" in out.stdout
    assert "Address already in use" in (run_dir / "report.html").read_text()


@pytest.fixture
def full_disk(tmp_path: Path) -> Any:
    """A 64 KiB tmpfs as the runs directory: the recording cannot be written."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("repeat", [100, 5000])
def test_full_disk_under_the_run_directory(tmp_path: Path, full_disk: Path, repeat: int) -> None:
    """ENOSPC when the recording is closed (a small run: it fits the write
    buffer) or while it is written (a large one): the run stops, every
    teardown step still runs (one line lists what failed), exit 3, nothing
    left."""
    text = small_scenario(tmp_path, clients_s=4.0).read_text()
    path = tmp_path / "big.toml"
    path.write_text(text.replace('"--repeat", "3"', f'"--repeat", "{repeat}"'))
    run = LiveRun(str(path), "--runs-dir", str(full_disk))
    run.wait_programs()
    code, out, err = run.finish()
    assert code == Exit.CRASHED, err
    lines = [line for line in err.splitlines() if "teardown" in line]
    assert len(lines) <= 1 and "Traceback" not in err, err
    if repeat == 100:
        assert "close the recording: [Errno 28] No space left on device" in lines[0], err
    else:
        errors = run.result()["errors"]
        assert any("the recording in" in e and "No space left" in e for e in errors), errors
    (run_dir,) = full_disk.iterdir()
    assert not (run_dir / "run.json.tmp").exists()
    assert_clean_end(run)


def test_kill_9_of_an_actor_with_workers_leaves_no_worker(tmp_path: Path) -> None:
    """A multiplexer beyond its per-process share runs worker processes in
    its process group: kill -9 of the leader takes the workers with it."""
    extra = (
        '\n[[actors]]\nname = "mux"\nrole = "multiplexer"\nargs = ["--target", '
        '"127.0.0.1:{port}", "--connections", "300", "--per-process", "100"]\n'
        '\n[[phases]]\nname = "hold"\nduration_s = 8\n'
        'commands = [{ actor = "mux", name = "start" }]\n'
    )
    run, runs = start(tmp_path, clients_s=0.5, extra=extra)
    status = run.wait_phase("hold")
    leader = status["actors"]["mux"]["pid"]
    deadline = time.monotonic() + 30
    while len(group_members(leader)) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    workers = set(group_members(leader)) - {leader}
    assert len(workers) >= 2, "the multiplexer started no workers"
    os.kill(leader, signal.SIGKILL)
    code, out, err = run.finish()
    assert code == Exit.CRASHED, err
    assert_clean_end(run)
