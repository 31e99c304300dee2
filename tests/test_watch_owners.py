"""`tcplab watch` names the owner of a foreign program's sockets from the kernel alone.

A one-file C server (tests/data/leaky_server.c, built here with cc) and the
project's Go server with LEAK=true (examples/go, built by scripts/build-go.sh)
accept, read to EOF and never close: 50 clients connect, send, close. Watched
from outside with `tcplab watch --json --stuck 0`, every CLOSE_WAIT
transition of the server's sockets carries the server's pid as owner
(learned from accept4, never from the on-CPU pid), each fd reports its EOF
read, none is closed, and the stuck table lists all 50 with those facts.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from lab_helpers import ROOT, SLOW, TCPLAB

from probes import selectors
from probes.sockdiag import DiagQuery

DEADLINE_S = 60.0 * SLOW
CLIENTS = 50
SOURCE = Path(__file__).parent / "data" / "leaky_server.c"

pytestmark = [pytest.mark.root, pytest.mark.bpf]


GO_SERVER = ROOT / "examples" / "go" / "bin" / "server"
# What each server's client sends before it closes, and the server's name.
# The Go server echoes each line: its client waits for the echo, so that
# the server's last act is the EOF read (a write after the peer's close
# would draw a reset and take the socket out of CLOSE_WAIT).
KINDS = {"c": (b"hello", "leaky_server"), "go": (b"hello\n", "server")}


@pytest.fixture(params=list(KINDS))
def leaky_server(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """A leaking server that is not one of tcplab's actors: (process, port, kind)."""
    if request.param == "c":
        cc = shutil.which("cc")
        if cc is None:
            pytest.fail("no C compiler: install build-essential (scripts/provision.sh does)")
        binary = tmp_path / "leaky_server"
        subprocess.run([cc, "-O2", "-Wall", "-o", str(binary), str(SOURCE)], check=True)
        proc = subprocess.Popen([str(binary), "0"], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
    else:
        build = subprocess.run(
            ["bash", str(ROOT / "scripts" / "build-go.sh")], capture_output=True, text=True
        )
        assert build.returncode == 0, build.stderr
        proc = subprocess.Popen(
            [str(GO_SERVER), "-addr", "127.0.0.1:0"], stderr=subprocess.PIPE, text=True,
            env={**os.environ, "LEAK": "true"},
        )  # fmt: skip
        assert proc.stderr is not None  # its JSON log lines (a few KB here: the pipe holds them)
        port = int(json.loads(proc.stderr.readline())["addr"].rsplit(":", 1)[1])
    yield proc, port, request.param
    proc.kill()
    proc.wait()


class JsonWatch:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [TCPLAB, "watch", "--json", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert self.proc.stderr is not None
        first = self.proc.stderr.readline().decode()
        if not first.startswith("attached: "):
            self.stop()
            pytest.fail(f"watch did not attach: {first!r}")
        # "attached: NAME: MODE (HOOKS); ...", one part per loaded probe.
        self.attached = [part.split(":")[0] for part in first[10:].rstrip("\n").split("; ")]
        self.events: list[dict[str, Any]] = []
        self._buf = b""

    def _take(self, data: bytes) -> None:
        self._buf += data
        *done, self._buf = self._buf.split(b"\n")
        self.events += [json.loads(line) for line in done if line]

    def until(self, pred: Any, what: str) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + DEADLINE_S
        while not pred(self.events):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                pytest.fail(f"watch printed no {what} in {DEADLINE_S} s")
            if select.select([fd], [], [], 0.1)[0]:
                self._take(os.read(fd, 1 << 20))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=DEADLINE_S)
        self._take(out + b"\n")
        return self.proc.returncode

    def close(self) -> None:
        """Kill watch if a failed test left it running (stop() is the clean way out)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def close_five(watch: JsonWatch, port: int) -> None:
    """Five clients connect, send and close; once watch has printed the leaky
    server's five EOF reads (it keeps the fds: CLOSE_WAIT), watch is stopped."""
    for _ in range(5):
        c = socket.create_connection(("127.0.0.1", port))
        c.sendall(b"hello")
        c.close()
    watch.until(
        lambda ev: sum(e["type"] == "fdio" and e["what"] == "eof" for e in ev) >= 5,
        "5 EOF reads by the server",
    )
    assert watch.stop() == 0


def test_close_wait_of_a_foreign_server_is_owned_by_it(leaky_server: Any) -> None:
    server, port, kind = leaky_server
    msg, comm = KINDS[kind]
    watch = JsonWatch("--stuck", "0")
    # The watch is machine-wide: other namespaces' sockets may have the same
    # port numbers (and recycled skaddrs): this test's are known by its ports.
    client_ports: set[int] = set()
    try:
        for _ in range(CLIENTS):
            c = socket.create_connection(("127.0.0.1", port))
            client_ports.add(c.getsockname()[1])
            c.sendall(msg)
            if kind == "go":
                c.settimeout(DEADLINE_S)
                assert c.recv(100) == b"ECHO: " + msg
            c.close()  # the server reads EOF, and keeps the fd

        def eofs(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [
                e for e in events
                if e["type"] == "fdio" and e["pid"] == server.pid and e["what"] == "eof"
            ]  # fmt: skip

        watch.until(lambda ev: len(eofs(ev)) >= CLIENTS, f"{CLIENTS} EOF reads by the server")
        assert watch.stop() == 0
    finally:
        watch.close()
    ev = watch.events
    close_wait = [
        e for e in ev
        if e["type"] == "tcp_state" and e["new"] == "CLOSE_WAIT"
        and e["sport"] == port and e["dport"] in client_ports
    ]  # fmt: skip
    assert len(close_wait) == CLIENTS
    # The on-CPU pid is the client's (this test) or a softirq's; the owner is the
    # server: by its accept4, or, for a client that closed before the server
    # took it, by its listener (that socket's fd is not known yet).
    assert {(e["owner_pid"], e["owner_comm"]) for e in close_wait} == {(server.pid, comm)}
    # No assertion on cpu_pid: usually the client's or a softirq's, but a FIN
    # that arrives while the server holds the socket lock (inside its read) is
    # put on the backlog and processed in the server's own context
    # (release_sock), so the server may be on the CPU for some (seen under load).
    assert all(e["owner_how"] in ("accept", "listener") for e in close_wait)
    assert all((e["owner_fd"] is None) == (e["owner_how"] == "listener") for e in close_wait)
    # Each got an fd of the server once accepted.
    stuck = [e for e in ev if e["type"] == "stuck_at_end" and e["owner_pid"] == server.pid]
    fds = {e["owner_fd"] for e in stuck}
    assert len(fds) == CLIENTS and None not in fds
    # The syscall barrier: each of those fds read the message then EOF, and was never closed.
    eof = {e["fd"]: e for e in eofs(ev)}
    assert set(eof) == fds
    assert all(
        e["reads"] == 1 and e["read_bytes"] == len(msg) and e["eof_ts"] for e in eof.values()
    )
    assert {e["skaddr"] for e in eof.values()} == {e["skaddr"] for e in close_wait}
    assert not [
        e for e in ev if e["type"] == "fdio" and e["pid"] == server.pid and e["what"] == "close"
    ]
    # The stuck table at the end: all 50, accepted by the server, EOF read, never closed.
    assert {e["skaddr"] for e in stuck} == {e["skaddr"] for e in close_wait}
    assert all(e["owner_how"] == "accept" for e in stuck)
    assert all(e["state"] == "CLOSE_WAIT" and e["eof_ts"] and e["closed_ts"] is None for e in stuck)
    # The clients' sockets: every transition owned by this process (connect), and
    # each fd closed (an orphan in FIN_WAIT2 becomes a timewait sock, which the
    # state tracepoint does not show: the stuck table cannot list it).
    # (Their SYN_SENT has no local port yet: they are found by skaddr. A
    # closed one's memory may be the next one's: an skaddr is not a connection.)
    tcp = [e for e in ev if e["type"] == "tcp_state" and e["dport"] == port]
    assert len({(e["skaddr"], e["sport"]) for e in tcp if e["sport"] in client_ports}) == CLIENTS
    client_sks = {e["skaddr"] for e in tcp if e["sport"] in client_ports}
    mine = [e for e in tcp if e["skaddr"] in client_sks]
    assert {(e["owner_pid"], e["owner_how"]) for e in mine} == {(os.getpid(), "connect")}
    closed = [e for e in ev if e["type"] == "fdio" and e["pid"] == os.getpid()]
    assert client_sks <= {e["skaddr"] for e in closed if e["what"] == "close"}


@pytest.mark.parametrize("leaky_server", ["c"], indirect=True)
def test_comm_and_cgroup_keep_only_that_process(leaky_server: Any) -> None:
    """--comm and --cgroup: only the leaky server's events (its syscalls, and the
    transitions of the sockets it owns); none of this test's own connects."""
    server, port, _ = leaky_server
    root = Path(selectors.cgroup2_root())
    group = root / f"tcplab-test-{os.getpid()}"
    group.mkdir()
    try:
        (group / "cgroup.procs").write_text(str(server.pid))
        watch = JsonWatch("--comm", "leaky_server", "--cgroup", str(group))
        try:
            close_five(watch, port)
        finally:
            watch.close()
        ev = watch.events
        mine = [e for e in ev if e["type"] == "tcp_state" and e["sport"] == port]
        assert sum(e["new"] == "CLOSE_WAIT" for e in mine) == 5
        assert {e.get("owner_pid", e.get("pid")) for e in ev} == {server.pid}
    finally:
        server.kill()
        server.wait()
        deadline = time.monotonic() + DEADLINE_S
        while True:  # the cgroup empties once the killed server is gone
            try:
                group.rmdir()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def port_of_its_own() -> socket.socket:
    """A listener on a port no other socket of this namespace has yet.

    bind() may hand out a port that TIME_WAIT sockets (which last 60 s) still
    have: neither side's bind conflicts with them. A full run counted 55 on
    the port of this test's 5 (50 is what an earlier test's clients leave).
    Once bound, the port gets no one else's: connect() skips bound ports for
    its local end, and only this test connects to it."""
    with DiagQuery() as q:
        for _ in range(100):
            srv = socket.create_server(("127.0.0.1", 0))
            others = [s for s in q.sockets([srv.getsockname()[1]], info=False) if s.rport]
            if not others:
                return srv
            srv.close()
    raise AssertionError(f"100 ports in a row had other sockets, the last: {others}")


def test_timewait_counts_come_from_sock_diag() -> None:
    """--timewait -P PORT: the TIME_WAIT sockets this test leaves on its port."""
    srv = port_of_its_own()
    port = srv.getsockname()[1]
    watch = JsonWatch("--probe", "tcp_state", "-P", str(port), "--timewait")
    try:
        assert watch.attached == ["tcp_state"]  # the probe loaded, not every one attachable
        for _ in range(5):  # the client closes first: its end stays in TIME_WAIT
            c = socket.create_connection(("127.0.0.1", port))
            a, _ = srv.accept()
            c.close()
            a.recv(1)
            a.close()
        watch.until(
            lambda ev: any(e["type"] == "timewait" and e["count"] == 5 for e in ev),
            "a TIME_WAIT count of 5",
        )
        assert watch.stop() == 0
    finally:
        watch.close()
        srv.close()
    counts = [e["count"] for e in watch.events if e["type"] == "timewait"]
    assert counts[0] <= 5 and max(counts) == 5, counts


PARENT = r"""
import subprocess, sys
sys.stdin.readline()
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdin=subprocess.PIPE)
print(child.pid, flush=True)
sys.stdin.readline()
child.communicate(b"go\n")
"""
CHILD = r"""
import socket, sys
sys.stdin.readline()
s = socket.create_connection(("127.0.0.1", {port}))
s.sendall(b"x")
s.close()
"""


def test_pid_filter_follows_the_children() -> None:
    """watch -p PARENT: the fork is reported, and the child's connect and close,
    which the pid filter alone would not show, are traced."""
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, CHILD.format(port=port)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert parent.stdin is not None and parent.stdout is not None
    watch = JsonWatch("-p", str(parent.pid))
    try:
        parent.stdin.write("fork\n")
        parent.stdin.flush()
        child = int(parent.stdout.readline())
        watch.until(
            lambda ev: any(e["type"] == "proc" and e["child"] == child for e in ev), "the fork"
        )
        parent.stdin.write("go\n")  # the child connects only now
        parent.stdin.flush()
        a, _ = srv.accept()
        watch.until(
            lambda ev: any(
                e["type"] == "fdio" and e["pid"] == child and e["what"] == "close" for e in ev
            ),
            "the child's close",
        )
        a.close()
        assert watch.stop() == 0
    finally:
        watch.close()
        parent.kill()
        parent.wait()
        srv.close()
    ev = watch.events
    (fork,) = [e for e in ev if e["type"] == "proc" and e["what"] == "fork"]
    assert (fork["pid"], fork["child"]) == (parent.pid, child)
    (conn,) = [e for e in ev if e["type"] == "connect"]
    assert (conn["pid"], conn["dport"], conn["errno"]) == (child, port, 0)
    syn = [e for e in ev if e["type"] == "tcp_state" and e["skaddr"] == conn["skaddr"]]
    assert syn and all(e["owner_pid"] == child for e in syn)


@pytest.mark.parametrize("leaky_server", ["c"], indirect=True)
def test_pid_filter_keeps_the_sockets_the_process_owns(leaky_server: Any) -> None:
    """watch -p SERVER: its sockets' transitions, which mostly run on the
    clients' CPU time (softirq), are kept by their owner; nothing else of the
    clients'."""
    server, port, _ = leaky_server
    watch = JsonWatch("-p", str(server.pid), "--stuck", "0")
    try:
        close_five(watch, port)
    finally:
        watch.close()
    tcp = [e for e in watch.events if e["type"] == "tcp_state"]
    close_wait = [e for e in tcp if e["new"] == "CLOSE_WAIT" and e["sport"] == port]
    assert len(close_wait) == 5
    assert all(e["owner_pid"] == server.pid for e in close_wait)
    # Kept by their owner, not by who was on the CPU: mostly the client's
    # softirq. A FIN that arrives while the server holds the socket lock
    # (inside its read) waits in the backlog and is processed by release_sock()
    # in the server's own context, so some may carry the server's pid; not all
    # five, or nothing here shows that the filter looks at the owner.
    assert any(e["cpu_pid"] != server.pid for e in close_wait), close_wait
    assert all(server.pid in (e["cpu_pid"], e["owner_pid"]) for e in tcp)
    stuck = [e for e in watch.events if e["type"] == "stuck_at_end"]
    assert len(stuck) == 5 and {e["owner_pid"] for e in stuck} == {server.pid}
