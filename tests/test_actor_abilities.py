"""The client's and server's socket abilities, on real sockets over loopback:
congestion control per socket, keepalive, the handshake in the connect
record, a bulk sender against a slow reader."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from actor_harness import Lab

from probes.sockdiag import DiagQuery


def test_bulk_sender_against_a_slow_reader(lab: Lab) -> None:
    """The server reads 4 KiB every 100 ms: data waits in its receive queue
    (the kernel holds what the application has not read); the client's
    records say what the kernel used (reno, the loopback MSS) and that all
    400000 bytes were acknowledged."""
    port = int(
        str(
            lab.start(
                "server",
                "server",
                "--port",
                "0",
                "--read-chunk",
                "4096",
                "--read-delay",
                "0.1",
                "--congestion",
                "reno",
            )["port"]
        )
    )
    # The loopback receiver acknowledges all 400000 bytes within ~50 ms (its
    # buffer takes them). A client that then closed with the server's echoes
    # unread would reset the connection (RFC 2525: data after close), and the
    # reset socket leaves sock_diag's tables: its queue was visible for
    # ~100 ms, missed when this process started sampling late (the first
    # test of a loaded run). Idle, the client reads the echoes and keeps it.
    lab.start(
        "client",
        "client",
        "--target",
        f"127.0.0.1:{port}",
        "--lines",
        "0",
        "--send-bytes",
        "400000",
        "--congestion",
        "reno",
        "--idle",
        "60",
    )
    backlog = 0
    seen: list[tuple[int, int, int, int]] = []  # the last sample, for a failure's message
    with DiagQuery() as q:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and backlog <= 4096:
            sample = q.sockets([port])
            seen = [(s.lport, s.rport, s.state, s.rqueue) for s in sample]
            backlog = max([backlog, *(s.rqueue for s in sample if s.lport == port and s.rport)])
            lab.pump(20)
    # More waiting than one read takes.
    assert backlog > 4096, (seen, lab.records("client"), lab.records("server"))
    lab.wait_for(lambda e: bool(lab.records("client", "bulk_sent")), 60, "the client's bulk_sent")
    (sent,) = lab.records("client", "bulk_sent")
    assert sent["bytes"] == 400000 and sent["congestion"] == "reno"
    (conn,) = lab.records("client", "connect")
    assert conn["congestion"] == "reno"
    assert conn["advmss"] == 65483 and "timestamps" in conn["options"].split(",")
    lab.wait_for(lambda e: bool(lab.records("server", "echo")), 20, "the server's echoes")
    assert not lab.records("server", "peer_close")  # the connection lasted
    assert 0 == lab.stop("client")
    assert 0 == lab.stop("server")


def test_keepalive_and_congestion_are_set_on_the_socket(lab: Lab) -> None:
    """--keepalive 2,1,5 starts the kernel's keepalive timer on the idle connection."""
    port = int(str(lab.start("server", "server", "--port", "0")["port"]))
    lab.start(
        "client",
        "client",
        "--target",
        f"127.0.0.1:{port}",
        "--lines",
        "1",
        "--idle",
        "30",
        "--keepalive",
        "2,1,5",
        "--congestion",
        "cubic",
    )
    lab.wait_for(lambda e: bool(lab.records("client", "idle")), 20, "client idle")
    with DiagQuery() as q:
        (mine,) = [s for s in q.sockets([port]) if s.rport == port]
    assert mine.timer == "keepalive" and mine.congestion == "cubic"
    assert 0 < mine.expires_ms <= 2000
    assert 0 == lab.stop("client")
    assert 0 == lab.stop("server")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--keepalive", "2,1"], "--keepalive '2,1': give IDLE,INTVL,CNT"),
        (["--keepalive", "0,1,5"], "IDLE and INTVL from 1"),
        (["--congestion", "nosuch"], "--congestion nosuch"),
        (["--send-bytes", "-1"], "--send-bytes must be 0 or more"),
    ],
)
def test_bad_client_options_are_one_line(args: list[str], message: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "actors.client", *args], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("client: error:") and message in line, line
