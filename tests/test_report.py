"""build_reports: every output rebuilt from a run directory, and the HTML rendered."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from lab_helpers import TCPLAB
from synthetic import Actor, Lab, RecordingWriter, write_run_json

from correlator.errors import NoRecordingError
from reports import build_reports

T0 = 5_000_000_000
MS = 1_000_000
SERVER, CLIENT, LEAKER = Actor("server", 100), Actor("client", 200), Actor("leaker", 300)


def make_run(
    run_dir: Path,
    n: int = 40,
    leak: int = 5,
    kernel_until_ns: int | None = None,
    meta: dict[str, Any] | None = None,
) -> None:
    """A run of n echo connections and a leak; `kernel_until_ns`: the probe
    process died then (no kernel event after it); `meta` updates run.json."""
    w = RecordingWriter(
        run_dir / "recording.msgpack", batch=64, app_batch=8, kernel_until_ns=kernel_until_ns
    )
    lab = Lab(w)
    lab.listen(T0, SERVER, 8080)
    lab.listen(T0, LEAKER, 9090)
    for i in range(n):
        t = T0 + (i + 1) * MS
        p = lab.connect(t, CLIENT, SERVER, 40000 + i, 8080)
        lab.client_close(t + MS // 2, p)
        lab.observer(t, {"TIME_WAIT": i + 1, "ESTABLISHED": 1}, {"100": 5})
        lab.epoll_event(t, SERVER, 100, 1 + i % 3)
    for i in range(leak):
        t = T0 + (n + i + 1) * MS
        p = lab.connect(t, CLIENT, LEAKER, 41000 + i, 9090)
        lab.client_close(t + MS // 2, p, server_closes=False)
    lab.accept_failed(T0 + (n + leak + 2) * MS, LEAKER, 24, "EMFILE")
    lab.probe_stats(T0 + (n + leak + 3) * MS, {"tcp_state": {"events": 500, "drops": 2}})
    w.close()
    write_run_json(
        run_dir,
        {
            "scenario": "report-test",
            "description": "echo clients and a leaker",
            "started_mono_ns": T0,
            "ended_mono_ns": T0 + (n + leak + 5) * MS,
            "actors": {
                a.name: {"role": a.name, "pid": a.pid, "exit_code": 0, "crashed": False}
                for a in (SERVER, CLIENT, LEAKER)
            },
            "phases": [{"name": "run", "start_mono_ns": T0, "end_mono_ns": T0 + 99 * MS}],
            "bus": {
                "frames": 10,
                "rejected": {},
                "rejected_samples": [],
                "gaps": [],
                "senders": {},
            },
            "expected": {
                "outcomes": {"time_wait": f">={n}", "stuck_close_wait": f"=={leak}"},
                "accept": {"EMFILE": ">0"},
            },
            "interrupted": False,
        }
        | (meta or {}),
    )


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    make_run(tmp_path)
    return tmp_path


def test_build_reports_writes_every_output(run_dir: Path) -> None:
    """One call writes all five outputs and returns the summary it saved."""
    summary = build_reports(run_dir)
    for name in ("events.jsonl", "connections.jsonl", "summary.json", "report.html", "trace.json"):
        assert (run_dir / name).stat().st_size > 0, name
    assert json.loads((run_dir / "summary.json").read_text()) == json.loads(
        json.dumps(summary, default=str)
    )
    assert summary["expectations_held"] is True
    assert {"time_wait": 40, "clean": 40, "stuck_close_wait": 5, "stuck_fin_wait2": 5} == {
        k: v for k, v in summary["counts"]["outcomes"].items() if v
    }


def test_jsonl_outputs_hold_the_timeline_and_the_lifecycles(run_dir: Path) -> None:
    """events.jsonl is in time order with owner and cpu_pid on state events;
    connections.jsonl has one line per socket incarnation."""
    summary = build_reports(run_dir)
    events = jsonl(run_dir / "events.jsonl")
    conns = jsonl(run_dir / "connections.jsonl")
    assert summary["outputs"]["events"] == len(events)
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)
    states = [e for e in events if e["type"] == "tcp_state"]
    assert all(
        {"cpu_pid", "owner", "cpu_is_owner", "conn", "phase", "t"} <= e.keys() for e in states
    )
    assert 2 * 45 + 2 == len(conns)
    assert {"run"} == {c["phase"] for c in conns}


def test_trace_has_a_track_per_connection_and_state_counters(run_dir: Path) -> None:
    """trace.json loads as trace-event JSON: a named track per connection with
    one slice per state, and counter events for the state totals."""
    build_reports(run_dir)
    trace = json.loads((run_dir / "trace.json").read_text())
    evs = trace["traceEvents"]
    tracks = {e["tid"] for e in evs if e["ph"] == "M" and e["name"] == "thread_name"}
    assert 92 == len(tracks)
    slices = [e for e in evs if e["ph"] == "X"]
    client = [e for e in slices if e["tid"] == min(tracks) + 1]
    assert {"ph", "name", "pid", "tid", "ts", "dur"} <= client[0].keys()
    counters = [e for e in evs if e["ph"] == "C"]
    assert any(c["args"].get("TIME_WAIT") == 40 for c in counters)
    names = {e["args"]["name"] for e in evs if e["ph"] == "M" and e["name"] == "process_name"}
    assert {"server 100", "client 200", "leaker 300"} <= names


def test_report_html_is_self_contained_and_leads_with_the_diagnosis(run_dir: Path) -> None:
    """The HTML starts with the diagnosis sentences, embeds its plots as SVG
    and references nothing outside itself."""
    summary = build_reports(run_dir)
    page = (run_dir / "report.html").read_text()
    first = summary["diagnosis"][0]
    assert first.startswith("5 sockets stuck in CLOSE_WAIT, owned by leaker pid 300")
    assert page.index("What happened") < page.index("<svg")
    assert first.replace("'", "&#x27;") in page
    assert page.count("<svg") >= 4
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|file:)""", page)
    assert "<script" not in page


def test_tcplab_report_rebuilds_the_same_outputs(run_dir: Path) -> None:
    """`tcplab report RUN_DIR` rebuilds every output from the recording, byte
    for byte what the run wrote, and prints the diagnosis and the report's path."""
    summary = build_reports(run_dir)
    outputs = ("events.jsonl", "connections.jsonl", "summary.json", "report.html", "trace.json")
    first = {name: (run_dir / name).read_bytes() for name in outputs}
    for name in outputs:
        (run_dir / name).unlink()
    r = subprocess.run(
        [TCPLAB, "report", str(run_dir)], capture_output=True, text=True, timeout=120, check=False
    )
    assert (r.returncode, r.stderr) == (0, "")
    assert {name: (run_dir / name).read_bytes() for name in outputs} == first
    printed = r.stdout.splitlines()
    assert f"  {summary['diagnosis'][0]}" in printed
    assert printed[-1] == f"  report: {run_dir / 'report.html'}"


def test_report_without_run_json_still_works(tmp_path: Path) -> None:
    """A recording alone is enough: times count from the first event."""
    make_run(tmp_path)
    (tmp_path / "run.json").unlink()
    summary = build_reports(tmp_path)
    assert 40 == summary["counts"]["outcomes"]["time_wait"]
    assert [] == summary["expectations"]


def test_damaged_recording_still_reports_and_counts_the_damage(tmp_path: Path) -> None:
    """A corrupt frame is skipped and counted in the lost-event ledger."""
    make_run(tmp_path)
    rec = tmp_path / "recording.msgpack"
    data = bytearray(rec.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 8] = b"\xc1" * 8
    rec.write_bytes(bytes(data))
    summary = build_reports(tmp_path)
    assert 1 == summary["losses"]["recording"]["corrupt_frames"]
    assert any("corrupt recording frames were skipped" in d for d in summary["diagnosis"])
    assert "corrupt frames skipped" in (tmp_path / "report.html").read_text()


def test_an_empty_run_still_gets_a_report(tmp_path: Path) -> None:
    """A recording with no events (only eofs) yields every output and says so
    plainly, including a crashed actor and an interrupted run."""
    w = RecordingWriter(tmp_path / "recording.msgpack")
    w.stats("actor:server", {"source": "server", "accepted": 0}, T0)
    w.close()
    write_run_json(
        tmp_path,
        {"actors": {"server": {"pid": 1, "crashed": True, "exit_code": -9}}, "interrupted": True},
    )
    summary = build_reports(tmp_path)
    assert 0 == summary["counts"]["connections"]
    assert "Actor server crashed (exit code -9)." in summary["diagnosis"]
    assert any(d.startswith("The run was interrupted") for d in summary["diagnosis"])
    assert "no data in this run" in (tmp_path / "report.html").read_text()
    assert [] == jsonl(tmp_path / "events.jsonl")


def test_probe_death_ends_the_kernel_view_and_the_report_says_so(tmp_path: Path) -> None:
    """The probe process crashed 20 ms into a 50 ms run: the report says when
    the kernel view ended, coverage counts the application connections it
    missed, expectations on kernel counts are unknown (those on the actors'
    own records still judged), and nothing is claimed about what came after."""
    died = T0 + 20 * MS + MS // 4  # connection 19 has connected, not closed
    actors = {
        "probes": {"role": "probes", "pid": 50, "exit_code": -9, "crashed": True},
        "server": {"role": "server", "pid": SERVER.pid, "exit_code": 0, "crashed": False},
        "client": {"role": "client", "pid": CLIENT.pid, "exit_code": 0, "crashed": False},
        "leaker": {"role": "leaker", "pid": LEAKER.pid, "exit_code": 0, "crashed": False},
    }
    actors["probes"]["ended_mono_ns"] = died
    expected = {
        "outcomes": {"time_wait": ">=40", "stuck_close_wait": "==5"},
        "accept": {"EMFILE": ">0"},
        "app": {"connect": ">=40"},
    }
    make_run(tmp_path, kernel_until_ns=died, meta={"actors": actors, "expected": expected})
    s = build_reports(tmp_path)
    assert s["horizon"]["kernel_ended_s"] == 0.02
    assert s["diagnosis"][0] == (
        "The kernel view ended 0.02 s into the 0.05 s run: the probe process crashed "
        "(exit code -9). Kernel figures cover only those 0.02 s."
    )
    status = {e["path"]: e["status"] for e in s["expectations"]}
    assert status == {
        "outcomes.time_wait": "unknown",
        "outcomes.stuck_close_wait": "unknown",
        "accept.EMFILE": "unknown",
        "app.connect": "held",
    }
    assert (s["expectations_status"], s["expectations_held"]) == ("unknown", None)
    assert s["diagnosis"][-1] == (
        "1 of 4 expectations held; 3 unknown (the kernel view ended at 0.02 s): "
        "outcomes.time_wait, outcomes.stuck_close_wait, accept.EMFILE."
    )
    # 45 connects logged, 20 of them before the kernel view ended.
    cov = s["coverage"]
    assert (cov["app_connections"], cov["app_connections_matched"]) == (90, 40)
    (coverage,) = [d for d in s["diagnosis"] if d.startswith("Coverage:")]
    assert coverage.startswith(
        "Coverage: the kernel view covers 0.02 s of the 0.05 s run (40.0%); 44.44% of "
    )
    assert (
        "2 sockets open at 0.02 s, where the kernel view ended: what became of them "
        "is not known." in s["diagnosis"]
    )
    assert not [d for d in s["diagnosis"] if "still open when the run ended" in d]
    page = (tmp_path / "report.html").read_text()
    assert "The kernel view ended at 0.02 s of 0.05 s: the probe process crashed" in page
    assert "<span class=unk>unknown</span> the kernel view ended at 0.02 s" in page


def test_no_recording_is_a_clear_error(tmp_path: Path) -> None:
    """A run dir without a recording raises NoRecordingError, writes nothing."""
    with pytest.raises(NoRecordingError, match="no recording.msgpack"):
        build_reports(tmp_path)
    assert [] == list(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.needs("chromium")
def test_report_renders_in_headless_chromium(run_dir: Path) -> None:
    """Chromium opens the report offline and renders it, plots included:
    the screenshot is a full page of mostly non-white pixels in many colours."""
    build_reports(run_dir)
    shot = run_dir / "shot.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                f"--user-data-dir={profile}",
                f"--screenshot={shot}",
                "--window-size=1200,3000",
                (run_dir / "report.html").as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    from matplotlib.image import imread

    img = imread(str(shot))
    assert (3000, 1200) == img.shape[:2]
    rgb = (img[:, :, :3] * 255).astype(int)
    colours = {tuple(px) for px in rgb[::7, ::7].reshape(-1, 3)}
    # Text alone gives a few greys; the plots bring reds, greens and blues.
    assert len(colours) > 200
    non_white = (rgb.sum(axis=2) < 700).mean()
    assert non_white > 0.03


@pytest.mark.parametrize(
    "row",
    [
        {"src": "kernel", "t": 1e-05, "x": 5e-7, "y": 0.0001, "z": 1e16},
        {"src": "app", "comm": "sérveur", "del": "\x7f", "ctl": "\x00\n"},
        {"src": "app", "rate": float("nan"), "inf": float("inf"), "none": None},
        {"src": "app", "nested": {"v": [float("-inf"), None]}, "owner": None},
        {"src": "app", "big": 1 << 70, "keys": {1: "a", None: "b"}},
        {"src": "app", "raw": b"\x01", "conn": None, "owner": {"fd": None, "pid": 1}},
    ],
)
def test_lines_are_written_exactly_as_json_writes_them(row: dict[str, Any]) -> None:
    """The fast encoder's lines are byte for byte json's, even where orjson
    alone would differ (small floats, non-ASCII, NaN, huge ints, int keys)."""
    from reports.writers import _event_line, dumps

    expected = json.dumps(row, separators=(",", ":"), default=str).encode()
    assert expected == _event_line(row)
    if "rate" not in row and "nested" not in row:
        assert expected == dumps(row)


@pytest.mark.root
@pytest.mark.bpf
@pytest.mark.netns
@pytest.mark.slow
def test_a_real_run_whose_probes_are_killed_reports_where_the_kernel_view_ended(
    tmp_path: Path,
) -> None:
    """`tcplab run` of a small scenario, its probe process killed (SIGKILL)
    once the clients start: the summary says when the kernel view ended and
    why, judges no kernel expectation, and claims nothing past that point."""
    from lab_helpers import LiveRun, small_scenario

    path = small_scenario(tmp_path, port=18080, clients_s=5.0)
    live = LiveRun(str(path), "--runs-dir", str(tmp_path / "runs"))
    try:
        live.wait_phase("clients")
        os.kill(live.pids["probes"], signal.SIGKILL)
        code, _, err = live.finish()
    finally:
        if live.proc.poll() is None:
            live.proc.kill()
            live.proc.communicate()
    run_dir = Path(live.result()["run_dir"])
    s = json.loads((run_dir / "summary.json").read_text())
    h = s["horizon"]
    assert h["kernel_why"] == "the probe process crashed (exit code -9)", err
    assert 0 < h["kernel_ended_s"] < h["run_s"]
    assert s["diagnosis"][0].startswith(f"The kernel view ended {h['kernel_ended_s']:g} s into")
    assert [(e["path"], e["status"]) for e in s["expectations"]] == [("outcomes.clean", "unknown")]
    assert s["expectations_status"] == "unknown"
    assert not [d for d in s["diagnosis"] if "still open when the run ended" in d]
    assert code == 3  # the kernel view was lost (README: exit codes)
