"""The orchestrator's heartbeat goes on through its slow steps.

An actor (and the probe process) that hears nothing from the orchestrator
for PEER_TIMEOUT_S (3 s) takes it for lost and ends with exit code 3. Each
test makes one step of the orchestrator slow for longer than that, with a
real actor process on a real bus watching, and checks the actor stayed.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from actor_harness import attach
from lab_helpers import in_ns

from bus.endpoints import Endpoints, ipc_endpoints, make_run_dir
from bus.hub import Hub
from bus.schema import Kind
from bus.transport import PEER_TIMEOUT_S, EventSender
from lab.hosts import Hosts, HostSpec
from lab.live import LiveView
from lab.run import LabRun, RunOptions
from lab.scenario import find
from lab.snapshots import SNAPSHOTS, Snapshotter

LOST = "orchestrator_lost"  # the actor's record when it gives up (actors/runtime.py)


def still_there(log: Path, exit_code: int | None) -> None:
    """The actor runs and never said it lost the orchestrator (exit code 3)."""
    text = log.read_text(errors="replace")
    assert exit_code is None and LOST not in text, f"exit code {exit_code}:\n{text[-2000:]}"


def test_a_backlog_of_slow_frames_does_not_stop_the_heartbeat(
    endpoints: Endpoints, tmp_path: Path
) -> None:
    """A backlog the hub takes long to read (here each frame's recording
    takes 5 ms, as on a slow disk: a stand-in, the test cannot slow a real
    disk) is read in slices with the heartbeats between them: 1.5
    PEER_TIMEOUT_S of frames and the actor is still there."""
    slow = {"on": False}

    def record(_channel: object, _frame: bytes) -> None:
        if slow["on"]:
            time.sleep(0.005)

    hub = Hub(endpoints.events, endpoints.control, record=record)
    log = tmp_path / "server.log"
    argv = [
        sys.executable,
        "-m",
        "actors.server",
        "--port",
        "0",
        "--quiet",
        *endpoints.as_args(),
        "--name",
        "server",
    ]
    with open(log, "wb") as out:
        server = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    dealer, session = attach(hub, endpoints, "flood")
    sender = EventSender(endpoints.events, "flood", session=session)
    try:
        deadline = time.monotonic() + 30
        while "server" not in hub.actors or not hub.actors["server"].ready:
            assert time.monotonic() < deadline and server.poll() is None, log.read_text()
            hub.poll(50)
        frames = int(1.5 * PEER_TIMEOUT_S / 0.005)  # below the sockets' high-water marks
        for i in range(frames):
            sender.send(Kind.STATS, {"source": "flood", "i": i})
        slow["on"] = True
        got = 0
        deadline = time.monotonic() + 60
        while got < frames:
            assert time.monotonic() < deadline, f"{got} of {frames} frames"
            got += sum(env.sender == "flood" for _, env in hub.poll(50))
        slow["on"] = False
        hub.poll(100)
        still_there(log, server.poll())
    finally:
        sender.close(linger_ms=0)
        dealer.close(linger=0)
        server.kill()
        server.wait()
        hub.close()


def test_a_process_slow_to_stop_does_not_stop_the_heartbeat(tmp_path: Path) -> None:
    """The run stops its processes in order and gives each a grace of 5 s
    before SIGKILL; meanwhile the others (the probes, stopped last) keep
    their heartbeat. Here one ignores SIGTERM: the whole grace passes."""
    run = LabRun(find("echo"), RunOptions(runs_dir=tmp_path, view="quiet"))
    run.sup.log_dir = tmp_path / "logs"
    run.bus_dir = make_run_dir(str(tmp_path))
    run.endpoints = ipc_endpoints(run.bus_dir)
    run._hub = Hub(run.endpoints.events, run.endpoints.control)
    try:
        server = run.sup.spawn(
            "server", "server", run._python("actors.server", "server", ["--port", "0"])
        )
        run._wait_ready(["server"], 30)
        stubborn = run.sup.spawn(
            "stubborn",
            "stubborn",
            [
                sys.executable,
                "-c",
                (
                    "import signal, time\n"
                    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                    "print('ignoring SIGTERM', flush=True)\n"
                    "time.sleep(60)\n"
                ),
            ],
        )
        deadline = time.monotonic() + 30
        while b"ignoring SIGTERM" not in stubborn.log_path.read_bytes():
            assert time.monotonic() < deadline, "the stubborn process did not start"
            run._serve_bus()
        started = time.monotonic()
        run._stop_in_order(["stubborn"])
        # The test is only meaningful if the stop outlasted the actors' patience.
        assert time.monotonic() - started > PEER_TIMEOUT_S
        assert stubborn.exit_code is not None
        run._serve_bus()
        run.sup.reap()
        still_there(server.log_path, server.exit_code)
        assert not [e for e in run.tally.errors if "server" in e]
    finally:
        run.sup.stop_all(grace_s=2.0)
        run.hub.close()
        shutil.rmtree(run.bus_dir, ignore_errors=True)


@pytest.mark.root
@pytest.mark.netns
def test_snapshots_are_taken_off_the_loop(tmp_path: Path) -> None:
    """A two-host run's socket snapshots (10,000 sockets: 0.4-1.6 s each
    here) come from their own thread: they accumulate while the caller does
    nothing but look, and the first is taken at once."""
    hosts = Hosts("snapthread", [HostSpec("a")]).create()
    socks: list[socket.socket] = []
    snaps = None
    try:

        def connect() -> int:
            srv = socket.create_server(("127.0.0.1", 0))
            cli = socket.create_connection(srv.getsockname())
            socks.extend([srv, cli, srv.accept()[0]])
            return int(srv.getsockname()[1])

        port = in_ns(hosts["a"].name, connect)
        snaps = Snapshotter(hosts.names(), [port], tmp_path).start()
        deadline = time.monotonic() + 30
        while snaps.samples < 3:
            assert time.monotonic() < deadline, f"{snaps.samples} snapshots in 30 s"
            time.sleep(0.05)
        snaps.close()
        rows = [json.loads(line) for line in (tmp_path / SNAPSHOTS).read_text().splitlines()]
        assert {r["kind"] for r in rows} == {"established", "sample"}
        assert {(r["lport"], r["rport"]) for r in rows if r["kind"] == "established"} == {
            (port, socks[1].getsockname()[1]),
            (socks[1].getsockname()[1], port),
        }
    finally:
        if snaps is not None:
            snaps.close()
        for s in socks:
            s.close()
        hosts.destroy()


def test_status_lines_nobody_reads_do_not_block_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """`tcplab run --json` with a reader that stops reading (a pager
    scrolled back): the pipe fills (64 KiB) and a write blocks; the loop's
    refresh() must not. Every line arrives, in order, once it reads again."""
    r, w = os.pipe()
    out = os.fdopen(w, "w")
    monkeypatch.setattr(sys, "stdout", out)
    view = LiveView("json", "echo", 1.0)
    lines = 200  # 1 KB each: three times what the pipe holds
    returned = threading.Event()

    def loop() -> None:
        with view:
            for i in range(lines):  # a new phase each: each one a line at once
                view.refresh({"phase": f"p{i}", "pad": "x" * 1000})
            returned.set()

    looping = threading.Thread(target=loop, daemon=True)
    looping.start()
    try:
        assert returned.wait(30), "refresh() blocked on a pipe nobody reads"
    finally:
        got = b""
        deadline = time.monotonic() + 30
        while got.count(b"\n") < lines and time.monotonic() < deadline:
            if select.select([r], [], [], 0.1)[0]:
                got += os.read(r, 1 << 16)
        looping.join(30)
        monkeypatch.undo()
        out.close()
        os.close(r)
    phases = [json.loads(line)["phase"] for line in got.decode().splitlines()]
    assert phases == [f"p{i}" for i in range(lines)]
