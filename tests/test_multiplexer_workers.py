"""The multiplexer beyond what one process may open: worker processes.

The lab machine's hard open-file limit is 20000, so workers start above
~19000 connections; the same path runs here with a hard limit of 700 per
process (util-linux prlimit), which makes workers start at a few hundred.
Real processes, real sockets, real ZeroMQ.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from actor_harness import Lab

from bus.schema import Kind

HARD_LIMIT = 700


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.needs("prlimit")
def test_connections_beyond_the_open_file_limit_go_to_worker_processes(lab: Lab) -> None:
    """1500 connections under a hard limit of 700 files per process: the
    multiplexer holds what fits and worker processes hold the rest, each
    under the limit; the total counts them all and every worker is gone
    after stop."""
    ready = lab.start("server", "server", "--port", "0")
    target = f"127.0.0.1:{ready['port']}"
    prefix = ["prlimit", f"--nofile={HARD_LIMIT}:{HARD_LIMIT}", "--"]
    args = ("--target", target, "--connections", "1500", "--interval", "0.5")
    lab.start("multiplexer", "multiplexer", *args, prefix=prefix)
    mux = lab.procs["multiplexer"]
    full = lab.wait_for(
        lambda e: (
            e.kind is Kind.STATS
            and e.sender == "multiplexer"
            and e.body.get("total_held") == 1500
            and e.body["total_echoes_per_s"] > 0
        ),
        60,
        "1500 connections held across the workers",
    )
    (spawned,) = lab.records("multiplexer", "workers")
    workers = spawned["pids"]
    assert full.body["workers"] == len(workers) >= 2
    assert full.body["held"] < HARD_LIMIT
    assert full.body["total_connect_failed"] == 0
    for pid in [mux.pid, *workers]:
        assert open_files(pid) <= HARD_LIMIT
    assert 0 == lab.stop("multiplexer", timeout_s=60)
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in workers):
        assert time.monotonic() < deadline, "a worker outlived the multiplexer"
        time.sleep(0.05)
