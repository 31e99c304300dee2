"""`tcplab watch` as a user runs it: JSON and text output, Ctrl-C and
--duration, bad input; real processes, real eBPF. The port filters are in
tests/test_probe_cli_filters.py."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time

import pytest
from lab_helpers import TCPLAB
from watch_harness import (
    ACCEPT_LINE,
    CONNECT_LINE,
    DEADLINE_S,
    EPOLL_LINE,
    FD_LINE,
    Watch,
    tcp_lines,
)

from probes.plan import make_plan

pytestmark = [pytest.mark.root, pytest.mark.bpf]


def read_until(proc: subprocess.Popen[str], want: int) -> list[dict[str, object]]:
    """JSON lines from watch until `want` tcp CLOSE transitions were printed."""
    assert proc.stdout is not None
    got: list[dict[str, object]] = []
    buf = b""
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + DEADLINE_S
    while sum(e.get("new") == "CLOSE" for e in got) < want:
        if time.monotonic() > deadline or proc.poll() is not None:
            pytest.fail(f"watch printed only {got}")
        # Raw reads: a buffered readline would hide lines from select().
        if select.select([fd], [], [], 0.1)[0]:
            buf += os.read(fd, 65536)
            *lines, buf = buf.split(b"\n")
            got += [json.loads(line) for line in lines]
    return got


def test_watch_json_prints_filtered_events_and_drops_on_ctrl_c() -> None:
    """watch -P PORT --json: that port's events as JSON lines; Ctrl-C prints the drop count."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    other = socket.create_server(("127.0.0.1", 0))
    proc = subprocess.Popen(
        [TCPLAB, "watch", "--json", "-P", str(port), "--probe", "tcp_state"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        mode = make_plan().probes["tcp_state"].mode
        assert proc.stderr.readline().startswith(f"attached: tcp_state: {mode} (")
        for s in (other, srv):  # the other port first: it must not show up
            if s is srv:
                s.listen()
            c = socket.create_connection(s.getsockname())
            a, _ = s.accept()
            c.close()
            a.close()
        srv.close()
        events = read_until(proc, 3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=DEADLINE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        other.close()
    assert proc.returncode == 0
    assert all(port in (e["sport"], e["dport"]) for e in events)
    assert err.strip().splitlines()[-1].startswith("drops: 0 (tcp_state ")


def test_watch_duration_stops_by_itself() -> None:
    r = subprocess.run(
        [TCPLAB, "watch", "--duration", "0.5", "--probe", "accept", "-p", "1"],
        capture_output=True, text=True, timeout=DEADLINE_S,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines()[-1] == "drops: 0 (accept 0 events 0 drops)"


def test_watch_bad_input_is_one_clear_line() -> None:
    r = subprocess.run([TCPLAB, "watch", "-P", "70000"], capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.strip() == "Error: port 70000 is out of range: give 1..65535"


# A process for watch -p: a listener, then (on "go") a non-blocking accept on
# the empty queue, a blocking one (the test connects once the first said
# EAGAIN), and an epoll wait that times out.
WORKER = r"""
import select, socket, sys
srv = socket.create_server(("127.0.0.1", 0))
print(srv.getsockname()[1], srv.fileno(), flush=True)
sys.stdin.readline()
srv.setblocking(False)
try:
    srv.accept()
except BlockingIOError:
    print("EAGAIN", flush=True)  # the test connects only now
srv.setblocking(True)
conn, _ = srv.accept()
ep = select.epoll()
print(conn.fileno(), ep.fileno(), len(ep.poll(0.01, 4)), flush=True)
sys.stdin.readline()
"""


def test_watch_text_format_of_each_probe() -> None:
    """watch -p PID prints one line per event in the documented text format:
    the process's accept4 (EAGAIN, then a peer), its epoll_wait timing out,
    and TCP states (those run on its CPU time; which ones is up to the
    scheduler, so only their format is checked)."""
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert worker.stdin is not None and worker.stdout is not None
    try:
        port, lfd = map(int, worker.stdout.readline().split())
        w = Watch("-p", str(worker.pid))
        try:
            worker.stdin.write("go\n")
            worker.stdin.flush()
            assert worker.stdout.readline() == "EAGAIN\n"
            cli = socket.create_connection(("127.0.0.1", port))
            cport = cli.getsockname()[1]
            fd, epfd, ready = map(int, worker.stdout.readline().split())
            assert ready == 0
            lines = w.until(
                lambda ls: (
                    any(EPOLL_LINE.fullmatch(x) for x in ls)
                    and sum(bool(ACCEPT_LINE.fullmatch(x)) for x in ls) >= 2
                ),
                "accept and epoll lines",
            )
            cli.close()
        finally:
            worker.stdin.write("end\n")
            worker.stdin.flush()
            code, last = w.stop()
    finally:
        worker.wait(timeout=DEADLINE_S)
    assert code == 0 and last.startswith("drops: 0 (")
    accepts = [m for m in map(ACCEPT_LINE.fullmatch, lines) if m]
    assert [(m["syscall"], int(m["pid"]), int(m["lfd"]), m["err"]) for m in accepts] == [
        ("accept4", worker.pid, lfd, "EAGAIN"),
        ("accept4", worker.pid, lfd, None),
    ]
    assert (int(accepts[1]["fd"]), accepts[1]["peer"], int(accepts[1]["port"])) == (
        fd, "127.0.0.1", cport,
    )  # fmt: skip
    (wait,) = [m for m in map(EPOLL_LINE.fullmatch, lines) if m]
    assert (int(wait["pid"]), int(wait["epfd"]), int(wait["max"])) == (worker.pid, epfd, 4)
    assert (wait["timeout"], wait["ready"], wait["err"]) == ("10", "0", None)
    assert float(wait["ms"]) >= 10.0  # the kernel never ends a timed wait early
    # Every other line is a TCP state line (tcp_lines fails on any other), or
    # the syscall barrier's (the worker's fds closing as it exits).
    others = (ACCEPT_LINE, EPOLL_LINE, FD_LINE, CONNECT_LINE)
    tcp_lines([x for x in lines if not any(p.fullmatch(x) for p in others)])
