"""bus.schema.decode of a LOG batch: decoded once, every record kept whole
(keys AppRecord does not name too), a record that does not fit refused.

Frames are packed here with msgpack, not bus.schema.encode: the test states
the wire format."""

from __future__ import annotations

import time
from typing import Any

import msgpack
import msgspec
import pytest

from bus.schema import FrameError, Kind, decode


def log_frame(records: list[Any]) -> bytes:
    body = {"records": records}
    return msgpack.packb([1, "log", ["bomber", "s" * 32], 7, time.monotonic_ns(), body])


def record(**change: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "event": "connect", "actor": "bomber", "pid": 41, "mono_ns": 5, "wall": 1.5,
        "level": "info", "fd": 3, "laddr": "127.0.0.1", "lport": 40000,
        "raddr": "127.0.0.1", "rport": 8080,
    }  # fmt: skip
    rec.update(change)
    return {k: v for k, v in rec.items() if v is not DROP}


DROP = object()


def test_a_log_batch_comes_out_whole_with_keys_the_definition_does_not_name() -> None:
    recs = [
        record(),
        record(event="progress", fd=DROP, laddr=DROP, lport=DROP, raddr=DROP, rport=DROP,
               made=120, rates=[1.5, 2.0], note={"phase": "bomb"}),
        record(wall=2),  # an int where AppRecord asks for a float: taken, as a number
    ]  # fmt: skip
    env = decode(log_frame(recs))
    assert (Kind.LOG, "bomber", 7) == (env.kind, env.sender, env.seq)
    assert {"records": recs} == env.body
    assert [dict] * 3 == [type(r) for r in env.body["records"]]


@pytest.mark.parametrize(
    ("bad", "where"),
    [
        (record(pid=-1), "pid"),
        (record(mono_ns="5"), "mono_ns"),
        (record(fd=None), "fd"),
        (record(event=DROP), "event"),
        (record(wall=True), "wall"),
        ("connect", "records[1]"),
    ],
)
@pytest.mark.parametrize("typed_log", [False, True])
def test_a_record_that_does_not_fit_refuses_the_batch_as_bad_body(
    bad: Any, where: str, typed_log: bool
) -> None:
    with pytest.raises(FrameError) as e:
        decode(log_frame([record(), bad]), typed_log=typed_log)
    assert "bad_body" == e.value.reason
    assert where in e.value.detail


def test_typed_log_records_carry_the_fields_apprecord_names_and_drop_the_rest() -> None:
    """What the orchestrator's live loop gets (lab/run.py): every record,
    counted and checked, its AppRecord fields as sent; other keys left out."""
    recs = [record(), record(event="progress", fd=DROP, made=120)]
    env = decode(log_frame(recs), typed_log=True)
    got = env.body["records"]
    assert 2 == len(got)
    assert ("connect", 41, 3, "127.0.0.1", 40000) == (
        got[0].event,
        got[0].pid,
        got[0].fd,
        got[0].laddr,
        got[0].lport,
    )
    assert ("progress", msgspec.UNSET) == (got[1].event, got[1].fd)
    assert not hasattr(got[1], "made")
