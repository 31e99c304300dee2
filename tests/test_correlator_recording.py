"""Reading run directories: damaged recordings, missing files, the expected language."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus.schema import Envelope, Kind, encode
from correlator.errors import ExpectationError, NoRecordingError, ReportError, RunMetaError
from correlator.expect import check, overall, parse_expectation, validate
from correlator.horizon import Horizon
from correlator.recording import RecordingReader, read_run_meta, recording_path


def frames(n: int) -> list[bytes]:
    return [
        encode(
            Envelope(
                Kind.LOG,
                "actor:a",
                i + 1,
                1000 + i,
                {
                    "records": [
                        {
                            "event": "x",
                            "actor": "a",
                            "pid": 1,
                            "mono_ns": 1000 + i,
                            "wall": 0.0,
                            "level": "info",
                        }
                    ]
                },
            )
        )
        for i in range(n)
    ]


def read(path: Path) -> tuple[list[int], RecordingReader]:
    reader = RecordingReader(path)
    return [env.seq for env in reader], reader


def test_clean_recording_reads_every_frame(tmp_path: Path) -> None:
    """Every frame of an undamaged recording comes back, in order."""
    p = tmp_path / "recording.msgpack"
    p.write_bytes(b"".join(frames(5)))
    seqs, r = read(p)
    assert [1, 2, 3, 4, 5] == seqs
    assert (5, 0, 0) == (r.stats.frames, r.stats.corrupt_frames, r.stats.skipped_bytes)


def test_a_corrupt_frame_is_counted_and_skipped(tmp_path: Path) -> None:
    """A damaged frame in the middle costs that frame only."""
    fs = frames(5)
    bad = bytearray(fs[2])
    bad[2:6] = b"\xc1\xc1\xc1\xc1"  # 0xc1 is never valid msgpack
    p = tmp_path / "recording.msgpack"
    p.write_bytes(b"".join(fs[:2]) + bytes(bad) + b"".join(fs[3:]))
    seqs, r = read(p)
    assert [1, 2, 4, 5] == seqs
    assert (1, len(bad)) == (r.stats.corrupt_frames, r.stats.skipped_bytes)
    assert [{"sender": "actor:a", "expected": 3, "got": 4}] == r.stats.summary()["gaps"]


def test_a_frame_with_a_bad_body_is_rejected_with_its_reason(tmp_path: Path) -> None:
    """Valid msgpack that breaks the envelope contract is rejected by the
    contract's decoder and counted under its reason."""
    fs = frames(3)
    wrong = msgpack.packb([1, "log", "actor:a", 2, 5, {"no_records": 1}])
    p = tmp_path / "recording.msgpack"
    p.write_bytes(fs[0] + wrong + fs[2])
    seqs, r = read(p)
    assert [1, 3] == seqs
    assert {"bad_body": 1} == r.stats.summary()["rejected"]


def test_garbage_between_frames_is_skipped(tmp_path: Path) -> None:
    """Junk bytes between frames are skipped up to the next frame header."""
    fs = frames(3)
    p = tmp_path / "recording.msgpack"
    junk = b"\x00garbage\xff" * 3
    p.write_bytes(fs[0] + junk + fs[1] + fs[2])
    seqs, r = read(p)
    assert [1, 2, 3] == seqs
    assert (1, len(junk)) == (r.stats.corrupt_frames, r.stats.skipped_bytes)


def test_a_truncated_last_frame_is_reported(tmp_path: Path) -> None:
    """A recording cut off mid-frame keeps every whole frame and says so."""
    fs = frames(3)
    p = tmp_path / "recording.msgpack"
    p.write_bytes(fs[0] + fs[1] + fs[2][:-7])
    seqs, r = read(p)
    assert [1, 2] == seqs
    assert r.stats.truncated_tail is True
    assert 1 == r.stats.corrupt_frames


@settings(max_examples=80, deadline=None)
@given(st.integers(min_value=0, max_value=10_000), st.integers(min_value=0, max_value=255))
def test_any_single_byte_damage_is_survived_and_reported(
    tmp_path_factory: pytest.TempPathFactory, pos: int, value: int
) -> None:
    """Whatever byte is damaged, the reader finishes, keeps every frame before
    the damage in order, and any frame it could not return is reported (a
    corrupt region, a sequence gap, or a sender whose stream is incomplete
    at its eof) - never silently missing. A damaged
    length can make one frame swallow the next ones, and a damaged number
    (a seq) passes as valid, so which frames survive after it is not fixed."""
    fs = frames(20)
    eof = encode(Envelope(Kind.EOF, "actor:a", 21, 9999, {"last_seq": 21}))
    data = bytearray(b"".join(fs) + eof)
    pos %= len(data) - len(eof)
    data[pos] = value
    p = tmp_path_factory.mktemp("rec") / "recording.msgpack"
    p.write_bytes(bytes(data))
    seqs, r = read(p)
    starts = [sum(len(f) for f in fs[:i]) for i in range(len(fs))]
    hit = max(i for i, s in enumerate(starts) if s <= pos)
    assert list(range(1, hit + 1)) == seqs[:hit]
    if set(range(1, 21)) - set(seqs):
        stats = r.stats
        reported = stats.corrupt_frames or stats.ledger.gaps or not stats.ledger.complete("actor:a")
        assert reported


def test_missing_run_dir_and_recording_say_what_to_do(tmp_path: Path) -> None:
    """No directory or no recording: one clear error type with advice."""
    with pytest.raises(NoRecordingError, match="not a directory"):
        recording_path(tmp_path / "nope")
    with pytest.raises(NoRecordingError, match="tcplab run SCENARIO"):
        recording_path(tmp_path)


def test_run_json_is_optional_but_must_be_json(tmp_path: Path) -> None:
    """A missing run.json is fine; a broken one is a RunMetaError."""
    assert {} == read_run_meta(tmp_path)
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(RunMetaError, match="move it away"):
        read_run_meta(tmp_path)
    assert issubclass(RunMetaError, ReportError)


@pytest.mark.parametrize(
    ("expr", "actual", "held"),
    [
        (">=100", 100, True),
        (">=100", 99, False),
        (">0", 1, True),
        (">0", 0, False),
        ("==0", 0, True),
        ("<5", 5, False),
        ("!=3", 4, True),
        (7, 7, True),
        (">=10 and <20", 15, True),
        (">=10 and <20", 20, False),
    ],
)
def test_expectation_comparisons(expr: object, actual: int, held: bool) -> None:
    """Each comparison holds exactly when the count satisfies it."""
    out = check({"outcomes": {"time_wait": expr}}, {"outcomes": {"time_wait": actual}})
    status = "held" if held else "failed"
    assert [
        {
            "path": "outcomes.time_wait",
            "expect": expr,
            "actual": actual,
            "held": held,
            "status": status,
        }
    ] == out


def test_missing_counts_are_zero_and_bad_expressions_are_reported() -> None:
    """A count never produced is 0; a malformed leaf fails without raising."""
    out = check({"errors": {"EADDRNOTAVAIL": "==0", "EMFILE": "lots"}}, {"errors": {}})
    assert [True, False] == [e["held"] for e in out]
    assert "not a comparison" in out[1]["error"]


def test_validate_raises_for_scenario_authors() -> None:
    """Scenario loaders get an ExpectationError for a bad leaf."""
    with pytest.raises(ExpectationError):
        validate({"outcomes": {"time_wait": "about 100"}})
    with pytest.raises(ExpectationError):
        parse_expectation(True)
    validate({"outcomes": {"time_wait": ">=100"}, "phases": {"a": {"errors": {"X": 0}}}})


@pytest.mark.parametrize(
    ("path", "why"),
    [
        # Kernel counts of the whole run, or of a phase that ended after the
        # kernel view did: unknown.
        ("outcomes.time_wait", "the kernel view ended at 4 s"),
        ("phases.bomb.accept.EMFILE", "the kernel view ended at 4 s"),
        # A phase that ended before: its kernel counts are whole.
        ("phases.listen.outcomes.clean", None),
        # The actors' own records reach to the recording's end: judged.
        ("errors.EADDRNOTAVAIL", None),
        ("progress.bomber.failed.EADDRNOTAVAIL", None),
        ("states_peak.TIME_WAIT", None),
    ],
)
def test_expectations_on_data_past_the_kernel_view_are_unknown(path: str, why: str | None) -> None:
    """The probe process died 4 s into a 10 s run whose phase "listen" ended
    at 1 s and "bomb" at 9 s: what needs kernel events after 4 s is unknown."""
    h = Horizon(run_s=10.0, kernel_ended_s=4.0, kernel_why="the probe process crashed")
    ends = {"listen": 1.0, "bomb": 9.0}
    (entry,) = check(_tree(path, ">0"), _tree(path, 5), lambda p: h.judge(p, ends))
    assert (entry["status"], entry.get("why")) == (("unknown", why) if why else ("held", None))
    assert entry["held"] is (None if why else True)


def test_a_cut_recording_leaves_every_count_past_its_end_unknown() -> None:
    """The recording ends at 6 s: whole-run counts of any kind are unknown,
    those of a phase that ended before 6 s are judged."""
    h = Horizon(run_s=10.0, recording_ends_s=6.0, recording_why="its last frame is cut off")
    ends = {"listen": 1.0}
    out = check(
        {"errors": {"EMFILE": "==0"}, "phases": {"listen": {"connections": ">0"}}},
        {"errors": {}, "phases": {"listen": {"connections": 3}}},
        lambda p: h.judge(p, ends),
    )
    assert [(e["path"], e["status"]) for e in out] == [
        ("errors.EMFILE", "unknown"),
        ("phases.listen.connections", "held"),
    ]
    assert overall(out) == "unknown"
    assert overall([{"status": "held"}, {"status": "failed"}, {"status": "unknown"}]) == "failed"
    assert overall([]) is None


def _tree(path: str, leaf: object) -> dict[str, Any]:
    """{"a": {"b": leaf}} for "a.b"."""
    node: Any = leaf
    for key in reversed(path.split(".")):
        node = {key: node}
    return node
