"""Typed bodies at the bus boundary: a well-formed envelope with a wrongly
shaped body is counted and kept out, never handed to the run's consumers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import live_run
import msgpack
import pytest
import zmq


def frame(kind: str, sender: str, seq: int, body: Any) -> bytes:
    # Built by hand, not with bus.schema.encode: the test states the wire format.
    return msgpack.packb([1, kind, sender, seq, 1, body], use_bin_type=True)


@pytest.mark.root
@pytest.mark.bpf
@pytest.mark.netns
@pytest.mark.slow
def test_stats_with_a_string_for_states_does_not_break_a_run(tmp_path: Path) -> None:
    """Issue 10.1: STATS from "observer" whose `states` is "x" used to end
    `tcplab run` with a traceback and no report."""
    run = live_run.start("echo", tmp_path)
    ep = run.endpoints()
    ctx: zmq.Context[Any] = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect(ep.events)
    try:
        push.send(frame("stats", "observer", 1, {"source": "observer", "states": "x"}))
    finally:
        push.close(linger=5000)
        ctx.term()
    code, out, meta = run.finish()
    assert 0 == code, out
    assert 1 == meta["bus"]["rejected"].get("bad_body"), meta["bus"]
    assert (next(run.runs_dir.iterdir()) / "report.html").exists(), out
