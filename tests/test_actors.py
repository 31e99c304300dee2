"""Actors end to end: real actor processes, real sockets, real ZeroMQ to a real Hub."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from actor_harness import Lab, is_ready

from bus.schema import Kind


def start_server(lab: Lab, module: str = "server", *args: str) -> int:
    """Start a server-like actor on a free port; return the port from its READY."""
    return int(lab.start(module, module, "--port", "0", *args)["port"])


def test_echo_protocol_end_to_end(lab: Lab) -> None:
    """Each line the client sends comes back as 'ECHO: ' + line; both sides log
    every socket action with fd and the 4-tuple, and the two views agree."""
    port = start_server(lab)
    lab.start("client", "client", "--target", f"127.0.0.1:{port}", "--lines", "3", "--repeat", "2")
    lab.wait_for(
        lambda e: e.kind is Kind.STATS and e.sender == "client" and e.body["sessions"] == 2,
        20,
        "client done",
    )
    lab.wait_for(
        lambda e: any(r["event"] == "close" for r in lab.records("server")), 10, "server close"
    )
    assert 0 == lab.stop("client")
    assert 0 == lab.stop("server")

    recvs = lab.records("client", "recv")
    assert [True] * 6 == [r["ok"] for r in recvs]
    connects = lab.records("client", "connect")
    accepts = lab.records("server", "accept")
    # The client's local end is the server's remote end, connection by connection.
    expected = [(c["laddr"], c["lport"], c["raddr"], c["rport"]) for c in connects]
    assert expected == [(a["raddr"], a["rport"], a["laddr"], a["lport"]) for a in accepts]
    events = [r["event"] for r in lab.records("server")]
    assert ["listen", "ready"] == events[:2]
    assert 6 == events.count("echo")
    assert 2 == events.count("peer_close")
    for r in lab.records("server", "echo"):
        assert {"fd", "laddr", "lport", "raddr", "rport", "mono_ns", "pid", "wall"} <= set(r)
    assert lab.hub.events_ledger.complete("client")
    assert lab.hub.events_ledger.complete("server")


def test_leaker_logs_emfile_with_open_fds(lab: Lab) -> None:
    """Under RLIMIT_NOFILE=32 the leaker runs out of fds and logs accept_failed
    with errno EMFILE and its open-fd count, without spinning on the queue."""
    port = start_server(lab, "leaker", "--nofile", "32")
    lab.start("bomber", "bomber", "--target", f"127.0.0.1:{port}", "--count", "60")
    failed = lab.wait_for(
        lambda e: bool(lab.records("leaker", "accept_failed")), 20, "accept_failed"
    )
    assert failed is not None
    rec = lab.records("leaker", "accept_failed")[0]
    assert ("EMFILE", 24) == (rec["error"], rec["errno"])
    assert 30 <= rec["open_fds"] <= 33  # the limit, give or take an inherited fd
    accepted = len(lab.records("leaker", "accept"))
    assert 0 < accepted < 32
    assert 0 == lab.stop("bomber")
    assert 0 == lab.stop("leaker")
    # Back-off doubles from 0.2 s: a few failures, not thousands.
    assert len(lab.records("leaker", "accept_failed")) < 20


def test_sigterm_stops_gracefully_with_eof(lab: Lab) -> None:
    """SIGTERM makes an actor close its sockets, flush its logs and send eof."""
    start_server(lab)
    os.kill(lab.procs["server"].pid, signal.SIGTERM)
    lab.wait_for(lambda e: e.kind is Kind.EOF and e.sender == "server", 15, "server eof")
    assert 0 == lab.procs["server"].wait(timeout=15)
    assert lab.hub.events_ledger.complete("server")
    assert lab.records("server", "close")[-1].get("listener") is True


def test_actor_stops_when_orchestrator_vanishes(lab: Lab) -> None:
    """With the hub gone, an actor stops by itself (exit 3): no orphans."""
    start_server(lab)
    lab.hub.close()
    assert 3 == lab.procs["server"].wait(timeout=20)


def test_sigkilled_actor_is_detected(lab: Lab) -> None:
    """An actor killed with SIGKILL mid-run shows up in hub.silent()."""
    port = start_server(lab)
    lab.start("bomber", "bomber", "--target", f"127.0.0.1:{port}", "--rate", "200")
    lab.wait_for(lambda e: bool(lab.records("bomber", "connect")), 20, "bomber running")
    lab.procs["bomber"].send_signal(signal.SIGKILL)
    lab.wait_for(lambda e: "bomber" in lab.hub.silent(1.0), 20, "bomber silent")
    assert ["bomber"] == lab.hub.silent(1.0)
    assert not lab.hub.events_ledger.complete("bomber")


def test_set_command_and_unknown_command(lab: Lab) -> None:
    """`set` changes a parameter and echoes it; bad values and unknown commands
    get ok=False with an error that says what to do."""
    lab.spawn("bomber", "bomber", "--target", "127.0.0.1:9", "--count", "0")
    lab.wait_for(is_ready("bomber"), 20, "bomber ready")
    ack = lab.hub.command("bomber", "set", {"rate": 50})
    assert {"rate": 50.0, "count": 0} == ack.body["result"]
    bad = lab.hub.command("bomber", "set", {"rate": -1})
    assert (False, "set rate: give connections per second >= 0 (0 = max)") == (
        bad.body["ok"],
        bad.body["error"],
    )
    unknown = lab.hub.command("bomber", "jump")
    assert "unknown command 'jump': use start, stop or set" == unknown.body["error"]


@pytest.mark.parametrize("target", ["8.8.8.8:80", "10.0.0.1:8080", "example.com:80"])
def test_bomber_refuses_targets_outside_loopback(target: str) -> None:
    """A port bomb outside loopback is an attack: one clear line, exit 2."""
    out = subprocess.run(
        [sys.executable, "-m", "actors.bomber", "--target", target],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert 2 == out.returncode
    lines = out.stderr.strip().splitlines()
    assert 1 == len(lines)
    assert lines[0].startswith("bomber: error:")
    assert "127.0.0.1" in lines[0]


def test_observer_counts_open_fds_of_pids(lab: Lab) -> None:
    """fds: {pid: n} matches /proc/<pid>/fd for a process holding a known set."""
    holder = subprocess.Popen(["sleep", "60"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        lab.start("observer", "observer", "--pids", str(holder.pid))
        sample = lab.wait_for(lambda e: e.kind is Kind.STATS and "fds" in e.body, 20, "a sample")
        expected = len(list(Path(f"/proc/{holder.pid}/fd").iterdir()))
        assert {holder.pid: expected} == sample.body["fds"]
        assert 0 == lab.stop("observer")
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_multiplexer_holds_ten_thousand_connections(lab: Lab) -> None:
    """One multiplexer process holds 10000 echoing connections on one epoll loop.

    Threads: the loop is one; ZeroMQ adds its I/O thread and its reaper.
    """
    port = start_server(lab)
    lab.start("multiplexer", "multiplexer", "--target", f"127.0.0.1:{port}")
    full = lab.wait_for(
        lambda e: (
            e.kind is Kind.STATS
            and e.sender == "multiplexer"
            and e.body["held"] == 10000
            and e.body["echoes_per_s"] > 0
        ),
        120,
        "10000 connections held and echoing",
    )
    assert 0 == full.body["connect_failed"]
    assert full.body["threads"] <= 3
    assert 10000 == len(lab.records("multiplexer", "connect"))
    assert 0 == lab.stop("multiplexer", timeout_s=60)
    assert 10000 == len(lab.records("multiplexer", "close"))


def test_observer_serves_commands_when_samples_overrun(lab: Lab) -> None:
    """A sample that takes longer than the interval (here every one: 1 us)
    must not starve the command loop: `stop` is still acknowledged."""
    lab.start("observer", "observer", "--interval", "0.000001")
    lab.wait_for(lambda e: e.kind is Kind.STATS and "fds" in e.body, 20, "a sample")
    assert 0 == lab.stop("observer")
