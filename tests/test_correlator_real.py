"""The correlator on real recordings made by `tcplab run` on this machine.

tests/data/correlator/<scenario>/ holds a run's recording.msgpack and
run.json as the orchestrator wrote them. Each check compares the correlated
kernel view with an independent one: the observer's sock_diag counts, the
actors' own progress counters, their logs.
"""

from __future__ import annotations

import gzip
import json
import shutil
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
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


# Recordings of every scenario kept for the correlator's goldens (tests/data/golden).
GOLDEN = Path(__file__).parent / "data" / "golden"


def golden_run(tmp_path: Path, scenario: str) -> Path:
    """A scratch run directory holding a golden scenario's real recording."""
    run_dir = tmp_path / scenario
    run_dir.mkdir(parents=True)
    shutil.copy(GOLDEN / scenario / "run.json", run_dir / "run.json")
    with gzip.open(GOLDEN / scenario / "recording.msgpack.gz", "rb") as f:
        (run_dir / "recording.msgpack").write_bytes(f.read())
    return run_dir


def frames(data: bytes) -> list[list[Any]]:
    """The whole frames at the start of a recording: [version, kind, sender,
    seq, mono_ns, body] each, read with msgpack alone."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(data)
    out = []
    try:
        for frame in unpacker:
            out.append(frame)
    except (msgpack.ExtraData, ValueError):
        pass
    return out


@pytest.mark.parametrize("size_known", [True, False])
def test_a_recording_cut_short_says_where_it_ends_and_claims_no_absence(
    tmp_path: Path, size_known: bool
) -> None:
    """The echo run's recording cut in the middle of a frame at 80%: the
    report says where it ends (from run.json's byte count when it has one,
    else from the cut frame), judges no expectation on the missing part, and
    says "no connect() failed" only up to where the recording ends."""
    run_dir = golden_run(tmp_path, "echo")
    meta = json.loads((run_dir / "run.json").read_text())
    rec = run_dir / "recording.msgpack"
    data = rec.read_bytes()
    assert meta["recording"]["bytes"] == len(data)
    cut = data[: len(data) * 8 // 10]
    whole = frames(cut)
    assert sum(len(encode_frame(f)) for f in whole) < len(cut)  # a frame is cut
    rec.write_bytes(cut)
    if not size_known:
        del meta["recording"]
        (run_dir / "run.json").write_text(json.dumps(meta))
    s = build_reports(run_dir)

    t0, end = meta["started_mono_ns"], meta["ended_mono_ns"]
    ends_s = round((max(f[4] for f in whole) - t0) / 1e9, 3)
    run_s = round((end - t0) / 1e9, 3)
    why = (
        f"{len(data) - len(cut)} of its {len(data)} bytes are missing at the end"
        if size_known
        else "its last frame is cut off"
    )
    assert s["horizon"]["recording_ends_s"] == ends_s
    assert s["diagnosis"][0] == (
        f"The recording ends {ends_s:g} s into the {run_s:g} s run ({why}): "
        "every figure covers only that part."
    )
    assert {e["status"] for e in s["expectations"]} == {"unknown"}
    assert s["expectations_status"] == "unknown"
    absence = [d for d in s["diagnosis"] if "no connect() failed" in d]
    assert absence and all(
        f"until {ends_s:g} s, where the recording ends, no connect() failed" in d for d in absence
    )
    assert not [d for d in s["diagnosis"] if d.startswith("No event was lost")]
    assert (
        f"The recording ends at {ends_s:g} s of {run_s:g} s"
        in (run_dir / "report.html").read_text()
    )


def encode_frame(frame: list[Any]) -> bytes:
    return msgpack.packb(frame, use_bin_type=True)


def epoll_calls_by_thread(run_dir: Path) -> Counter[tuple[int, int, str]]:
    """(pid, tid, comm) -> epoll_wait calls, straight from the recording."""
    calls: Counter[tuple[int, int, str]] = Counter()
    for f in frames((run_dir / "recording.msgpack").read_bytes()):
        body = f[5]
        if f[1] == "kernel" and isinstance(body, dict):
            for ev in body.get("events") or []:
                if ev.get("type") == "epoll":
                    calls[(ev["pid"], ev["tid"], ev["comm"])] += 1
    return calls


def test_the_multiplexer_sentence_names_its_one_event_loop_thread(tmp_path: Path) -> None:
    """The multiplex run: of the multiplexer's three threads in epoll_wait two
    are ZeroMQ's (ZMQbg/...); the sentence names the one that waited for the
    connections, with its own call count, and only counts the bus threads."""
    run_dir = golden_run(tmp_path, "multiplex")
    s = build_reports(run_dir)
    pid = s["actors"]["multiplexer"]["pid"]
    mine = {k: n for k, n in epoll_calls_by_thread(run_dir).items() if k[0] == pid}
    assert len(mine) == 3
    own = [k for k in mine if not k[2].startswith("ZMQbg/")]
    assert len(own) == 1
    (_, tid, comm) = own[0]
    bus = sum(n for k, n in mine.items() if k not in own)
    held = s["counts"]["epoll_by_actor"]["multiplexer"]["connections_held"]
    (sentence,) = [d for d in s["diagnosis"] if d.startswith(f"multiplexer pid {pid} ")]
    assert sentence.startswith(
        f"multiplexer pid {pid} held {held} connections at once and waited for them in one "
        f"thread, {comm} (tid {tid}): {mine[own[0]]} epoll_wait calls, "
    )
    assert sentence.endswith(f"(ZeroMQ's 2 bus threads made {bus} more calls).")
    assert not [d for d in s["diagnosis"] if "threads of" in d]


def test_port_exhaustion_is_told_with_the_bombers_own_counter(tmp_path: Path) -> None:
    """The bomb run: the bomber logs a sample of its EADDRNOTAVAIL failures
    and counts them all; the sentence gives its counter (run.json's last
    progress), never the sampled records as the actors' count."""
    run_dir = golden_run(tmp_path, "bomb")
    s = build_reports(run_dir)
    meta = json.loads((run_dir / "run.json").read_text())
    counted = meta["progress"]["bomber"]["failed"]["EADDRNOTAVAIL"]
    logged = s["counts"]["errors"]["EADDRNOTAVAIL"]
    assert logged < counted
    (sentence,) = [d for d in s["diagnosis"] if "with EADDRNOTAVAIL (ephemeral" in d]
    assert sentence.endswith(f"and bomber's own counter says {counted}.")
    assert f"logged {logged}" not in sentence

    # The header counts sockets, by side: both ends of each loopback connection are there.
    rows = [json.loads(line) for line in (run_dir / "connections.jsonl").open()]
    sides = Counter(r["role"] for r in rows if r["kind"] == "connection")
    header = (
        f"{sides['active'] + sides['passive']} sockets ({sides['active']} opened by "
        f"connect(), {sides['passive']} server side)"
    )
    assert header in (run_dir / "report.html").read_text()


def test_scenario_texts_use_no_word_a_user_does_not_know() -> None:
    """Scenario summaries and descriptions (shown by `tcplab list` and in the
    report) never speak of "the seed", this project's own source document."""
    for path in sorted((Path(__file__).parent.parent / "scenarios").glob("*.toml")):
        doc = tomllib.loads(path.read_text())
        text = f"{doc.get('summary', '')} {doc.get('description', '')}"
        assert "seed" not in text.lower(), path.name


def test_an_absence_claim_says_when_events_were_lost_on_the_way(tmp_path: Path) -> None:
    """The echo run says no connect() failed for lack of ports; with a frame
    damaged in the middle of its recording the same claim is limited to what
    was recorded, since the damaged part may have held such a failure."""
    whole = build_reports(golden_run(tmp_path / "whole", "echo"))
    claim = "no connect() failed for lack of ports."
    assert [d for d in whole["diagnosis"] if d.endswith(claim)]
    run_dir = golden_run(tmp_path / "damaged", "echo")
    rec = run_dir / "recording.msgpack"
    data = bytearray(rec.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 8] = b"\xc1" * 8  # 0xc1: never used in msgpack
    rec.write_bytes(bytes(data))
    s = build_reports(run_dir)
    assert s["losses"]["recording"]["corrupt_frames"] == 1
    assert not [d for d in s["diagnosis"] if d.endswith(claim)]
    assert [
        d
        for d in s["diagnosis"]
        if d.endswith(
            "no connect() failed for lack of ports in what was recorded "
            "(events were lost: see Losses)."
        )
    ]
