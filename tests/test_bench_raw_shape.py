"""The bench's raw recordings (bench/correlator_replay.py to_raw) are the
dict-shaped ones in the shape real runs record: every tcp_state, accept and
epoll batch a KERNEL_RAW body, and the same reports from either."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

from bench.correlator_replay import gen_bomb, to_raw
from bus.rawconvert import batch_events
from bus.schema import Kind
from correlator.recording import RecordingReader
from reports.build import build_reports


def _kernel(run_dir: Path) -> list[tuple[Kind, str, int]]:
    return [
        (env.kind, env.body["probe"], env.seq)
        for env in RecordingReader(run_dir / "recording.msgpack")
        if env.kind in (Kind.KERNEL, Kind.KERNEL_RAW)
    ]


def test_raw_bomb_recording_gives_the_dict_recordings_reports(tmp_path: Path) -> None:
    dicts, raw = tmp_path / "dicts", tmp_path / "raw"
    dicts.mkdir()
    gen_bomb(dicts, 3000)
    shutil.copytree(dicts, raw)
    to_raw(raw)

    before, after = _kernel(dicts), _kernel(raw)
    assert Counter(k for k, _, _ in before) == {Kind.KERNEL: len(before)}
    assert Counter(k for k, _, _ in after) == {Kind.KERNEL_RAW: len(before)}
    assert {p for _, p, _ in after} == {"tcp_state", "accept", "epoll"}
    assert [(p, s) for _, p, s in after] == [(p, s) for _, p, s in before]

    # Decoded back by the product's converter, every record is its dict.
    for d_env, r_env in zip(
        RecordingReader(dicts / "recording.msgpack"),
        RecordingReader(raw / "recording.msgpack"),
        strict=True,
    ):
        if r_env.kind is Kind.KERNEL_RAW:
            got = batch_events(r_env.body)
            want = d_env.body["events"]
            assert len(got) == len(want)
            for g, w in zip(got, want, strict=True):
                assert {k: g[k] for k in w if k != "type"} == {
                    k: v for k, v in w.items() if k != "type"
                }

    build_reports(dicts)
    build_reports(raw)
    for name in ("connections.jsonl", "events.jsonl", "trace.json"):
        assert (raw / name).read_bytes() == (dicts / name).read_bytes(), name
    assert (raw / "connections.jsonl").read_text().count("\n") > 100
