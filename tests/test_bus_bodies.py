"""Typed bodies at the bus boundary: a well-formed envelope with a wrongly
shaped body is counted and kept out, never handed to the run's consumers."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from actor_harness import bus_of
from lab_helpers import LiveRun


@pytest.mark.root
@pytest.mark.bpf
@pytest.mark.netns
@pytest.mark.slow
def test_stats_with_a_string_for_states_does_not_break_a_run(tmp_path: Path) -> None:
    """Issue 10.1: STATS from "observer" whose `states` is "x" used to end
    `tcplab run` with a traceback and no report."""
    run = LiveRun("echo", "--runs-dir", str(tmp_path))
    ctx: zmq.Context[Any] = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    try:
        push.connect(bus_of(run.proc.pid).events)
        # By hand, not with bus.schema.encode: the test states the wire format.
        body = {"source": "observer", "states": "x"}
        push.send(msgpack.packb([1, "stats", "observer", 1, time.monotonic_ns(), body]))
        code, _out, err = run.finish()
    finally:
        push.close(linger=0)
        ctx.term()
        if run.proc.poll() is None:
            run.proc.kill()
    assert 0 == code, err
    run_dir = Path(run.result()["run_dir"])
    meta = json.loads((run_dir / "run.json").read_text())
    assert 1 == meta["bus"]["rejected"].get("bad_body"), meta["bus"]
    assert (run_dir / "report.html").stat().st_size > 0
