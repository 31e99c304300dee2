"""What a person sees during a run: the live view and the tally behind it."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

from lab_helpers import ROOT
from rich.console import Console

from bus.schema import Envelope, Kind
from lab.live import LiveView
from lab.run import LabRun, RunOptions
from lab.scenario import find
from lab.tally import Tally


def stats(sender: str, body: dict[str, object], seq: int = 1) -> Envelope:
    return Envelope(Kind.STATS, sender, seq, 1, {"source": sender, **body})


def test_progress_without_states_keeps_the_state_table() -> None:
    """The observer's progress report (no `states`) must not blank the
    table its last sample filled."""
    tally = Tally()
    tally.add(stats("observer", {"states": {"ESTABLISHED": 7, "TIME_WAIT": 3}}))
    tally.add(stats("observer", {"samples": 12}, seq=2))
    assert tally.states == {"ESTABLISHED": 7, "TIME_WAIT": 3}
    tally.add(stats("observer", {"states": {"ESTABLISHED": 1}}, seq=3))
    assert tally.states == {"ESTABLISHED": 1}


def render(view: LiveView, status: dict[str, object]) -> str:
    view._status = status
    out = io.StringIO()
    Console(file=out, width=200).print(view._render())
    return out.getvalue()


def test_clock_shows_set_up_apart_from_the_phases() -> None:
    """17 s in, 5 of them set-up: `phases 12s of 16s`, never `17s / 16s`."""
    view = LiveView("quiet", "echo", 16.0)
    text = render(view, {"phase": "clients", "elapsed_s": 17.0, "phases_elapsed_s": 12.0})
    assert "17s: set-up 5s, phases 12s of 16s" in text


def test_view_does_not_import_the_run() -> None:
    """No import circle: the view is given what it shows."""
    code = "import sys, lab.live; sys.exit('lab.run' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_a_run_has_its_attributes_before_it_executes(tmp_path: Path) -> None:
    """status() and meta() answer from the constructor on (a run that fails
    before it starts still writes what it knows)."""
    run = LabRun(find("echo"), RunOptions(runs_dir=tmp_path, view="quiet"))
    assert run.status()["phase"] == "setup"
    meta = run.meta()
    assert (meta["scenario"], meta["actors"], meta["interrupted"], meta["failed"]) == (
        "echo",
        {},
        False,
        False,
    )
    assert list(tmp_path.iterdir()) == []
