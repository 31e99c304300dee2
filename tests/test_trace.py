"""`tcplab trace`: the seed's leaking Go server traced from outside, as a
user would, with real probes; the run directory it leaves; usage errors."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from lab_helpers import ROOT, TCPLAB, free_port, tcplab

from lab.proctree import tree

GO_SERVER = ROOT / "examples" / "go" / "bin" / "server"
CLIENTS = 50


@pytest.fixture(scope="module", autouse=True)
def go_bin() -> None:
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-go.sh")], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr


def wait_until(pred: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, f"timed out after {timeout_s}s waiting for {what}"
        time.sleep(0.05)


def close_wait(port: int) -> int:
    out = subprocess.run(
        ["ss", "-Htn", "state", "close-wait", "sport", f"= :{port}"], capture_output=True, text=True
    ).stdout
    return len(out.splitlines())


def listens(port: int) -> bool:
    out = subprocess.run(
        ["ss", "-Hltn", "sport", f"= :{port}"], capture_output=True, text=True
    ).stdout
    return bool(out.strip())


def clients(port: int, n: int) -> None:
    """n connections, one after another: a line, its echo, close."""
    for _ in range(n):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.sendall(b"hello\n")
            assert c.recv(100) == b"ECHO: hello\n"


def final(out: str) -> dict[str, Any]:
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    return next(x for x in reversed(lines) if "exit_code" in x)


def render(report: Path) -> str:
    """The report's DOM after headless Chromium ran it."""
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run(
            [
                "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--dump-dom",
                report.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    return out.stdout


@pytest.mark.root
@pytest.mark.bpf
@pytest.mark.slow
@pytest.mark.needs("chromium")
def test_trace_the_leaking_go_server_then_ctrl_c(tmp_path: Path) -> None:
    """`tcplab trace -- server` with LEAK=true, 50 clients, Ctrl-C: exit 0;
    the summary says 50 sockets in CLOSE_WAIT owned by the Go process (by
    accept4, not by whoever was on the CPU), each with EOF read and no
    close (the fdio probe); report.html says it too."""
    port = free_port()
    proc = subprocess.Popen(
        [
            TCPLAB,
            "trace",
            "--json",
            "--runs-dir",
            str(tmp_path),
            "--",
            str(GO_SERVER),
            "-addr",
            f"127.0.0.1:{port}",
        ],
        cwd=ROOT,
        env={**os.environ, "LEAK": "true"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: listens(port) or proc.poll() is not None, 180, "the server")
        assert proc.poll() is None, proc.communicate()
        clients(port, CLIENTS)
        wait_until(lambda: close_wait(port) == CLIENTS, 10, f"{CLIENTS} CLOSE_WAIT sockets")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    result = final(out)
    run_dir = Path(result["run_dir"])
    meta = json.loads((run_dir / "run.json").read_text())
    go_pid = meta["programs"]["server"]
    sentence = (
        f"{CLIENTS} sockets stuck in CLOSE_WAIT, owned by server pid {go_pid}: "
        "accepted and never closed"
    )
    assert any(line.startswith(sentence) for line in result["summary"]["diagnosis"]), result
    stuck = [
        c
        for c in map(json.loads, (run_dir / "connections.jsonl").read_text().splitlines())
        if c["outcome"] == "stuck_close_wait"
    ]
    assert len(stuck) == CLIENTS
    # From accept4 or the program's own record of the socket, whichever came first.
    assert {c["owner"]["pid"] for c in stuck} == {go_pid}
    assert any(c["owner"]["via"] == "accept4" for c in stuck)
    # Whoever ran the softirq of the peer's FIN is mostly the client (this
    # test), not the owner; a FIN that arrives while the Go server holds the
    # socket's lock waits in the backlog and is processed by release_sock() in
    # the server's own context, so some may carry its pid. The owner is the
    # server for all of them all the same.
    entered = [next(s for s in c["states"] if s["state"] == "CLOSE_WAIT") for c in stuck]
    assert any(s["cpu_pid"] != go_pid for s in entered), entered
    assert {"server"} == {c["owner"]["actor"] for c in stuck}
    assert sum(c["app"].get("leaked", 0) for c in stuck) == CLIENTS
    # The syscall barrier (fdio), from the kernel alone: each fd read EOF and
    # was never closed.
    assert result["summary"]["counts"]["barrier"]["close_wait_eof_never_closed"] == CLIENTS
    barrier = (
        f"The syscall barrier: {CLIENTS} sockets stuck in CLOSE_WAIT, owned by server "
        f"pid {go_pid}, fds "
    )
    (line,) = [x for x in result["summary"]["diagnosis"] if x.startswith(barrier)]
    assert line.endswith(
        ": each read EOF (the peer's FIN reached the application) and was "
        "never closed — the local application's bug."
    )
    dom = render(run_dir / "report.html")
    assert sentence in dom and barrier in dom
    for name in ("events.jsonl", "summary.json", "trace.json"):
        assert (run_dir / name).stat().st_size > 0


@pytest.mark.root
@pytest.mark.bpf
@pytest.mark.slow
def test_trace_attaches_to_a_running_process(tmp_path: Path) -> None:
    """-p PID --duration: the process's sockets, owned by its pid; the
    process itself goes on running."""
    port = free_port()
    server = subprocess.Popen(
        [str(GO_SERVER), "-addr", f"127.0.0.1:{port}"],
        env={**os.environ, "LEAK": "true"},
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: listens(port), 10, "the server")
        proc = subprocess.Popen(
            [
                TCPLAB,
                "trace",
                "--json",
                "--runs-dir",
                str(tmp_path),
                "-p",
                str(server.pid),
                "--duration",
                "600",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # The probes are attached once the run reaches its phase.
        assert proc.stdout is not None
        for line in proc.stdout:
            if '"phase": "trace"' in line:
                break
        clients(port, 10)
        wait_until(lambda: close_wait(port) == 10, 10, "10 CLOSE_WAIT sockets")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert server.poll() is None
        run_dir = Path(final(out)["run_dir"])
        stuck = [
            c
            for c in map(json.loads, (run_dir / "connections.jsonl").read_text().splitlines())
            if c["outcome"] == "stuck_close_wait"
        ]
        assert len(stuck) == 10
        assert {c["owner"]["pid"] for c in stuck} == {server.pid}
        assert server.pid in json.loads((run_dir / "run.json").read_text())["trace"]["pids"]
    finally:
        server.kill()
        server.wait()


def test_proctree_follows_children() -> None:
    """A shell's child and grandchild are in its tree; an unrelated process is not."""
    sh = subprocess.Popen(["sh", "-c", "sleep 30 & sh -c 'sleep 30' & wait"])
    other = subprocess.Popen(["sleep", "30"])
    try:
        wait_until(lambda: len(tree({sh.pid})) >= 4, 10, "the shell's children")
        found = tree({sh.pid})
        assert sh.pid in found and other.pid not in found
        assert len(found) == 4
    finally:
        for pid in tree({sh.pid}) - {sh.pid}:
            # A sleep killed first ends its shell, which the outer shell reaps
            # at once: that pid may be gone by its turn.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for p in (sh, other):
            p.kill()
            p.wait()


@pytest.mark.root
@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give a command after -- (tcplab trace -- ./server) or -p PID, not both"),
        (
            ("-p", "1", "--", "true"),
            "give a command after -- (tcplab trace -- ./server) or -p PID, not both",
        ),
        (("-p", "999999999"), "no process 999999999: give the pid of a running process"),
        (("--", "/nonexistent/prog"), "cannot run /nonexistent/prog: not found or not executable"),
        (("--duration", "0", "--", "true"), "--duration 0: give seconds above 0, at most 3600"),
    ],
)
def test_trace_usage_errors_are_one_line(args: tuple[str, ...], message: str) -> None:
    out = tcplab("trace", *args, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip() == f"Error: {message}"
