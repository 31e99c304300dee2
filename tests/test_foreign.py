"""Foreign programs: the seed's Go programs, their lines as records, and
the relay that runs any command as an actor over a real bus."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from actor_harness import Lab, is_ready
from lab_helpers import ROOT, free_port, tcplab

from actors.lines import errno_in, to_record
from bus.schema import Kind
from lab.scenario import ScenarioError, load

GO_BIN = ROOT / "examples" / "go" / "bin"


@pytest.fixture(scope="module")
def go_bin() -> Path:
    """The Go programs, built as provision builds them (a no-op when current)."""
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-go.sh")], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr
    return GO_BIN


# -- lines as records -------------------------------------------------------


def test_a_slog_json_line_keeps_its_keys_and_names_its_error() -> None:
    line = (
        b'{"time":"2026-01-01T00:00:00Z","level":"ERROR","msg":"accept failed",'
        b'"error":"accept tcp 127.0.0.1:9090: accept4: too many open files","pid":7,"fd":9}'
    )
    r = to_record(line, "stderr", "server", 4242, 123)
    assert (r["event"], r["level"], r["actor"], r["pid"], r["mono_ns"]) == (
        "accept failed",
        "error",
        "server",
        4242,
        123,
    )
    assert (r["error"], r["errno"]) == ("EMFILE", 24)
    assert r["error_text"] == "accept tcp 127.0.0.1:9090: accept4: too many open files"
    assert (r["app_pid"], r["fd"], r["time"]) == (7, 9, "2026-01-01T00:00:00Z")


def test_a_structlog_line_and_a_text_line() -> None:
    r = to_record(b'{"event": "connect", "level": "info", "lport": 5}', "stdout", "a", 1, 2)
    assert (r["event"], r["lport"], r["stream"]) == ("connect", 5, "stdout")
    t = to_record(
        b"dial tcp 127.0.0.1:80: connect: cannot assign requested address", "stderr", "a", 1, 2
    )
    assert (t["event"], t["level"], t["error"]) == ("line", "error", "EADDRNOTAVAIL")
    assert t["text"].startswith("dial tcp")
    plain = to_record(b"hello {not json", "stdout", "a", 1, 2)
    assert (plain["event"], plain["text"], plain["level"]) == ("line", "hello {not json", "info")
    assert "error" not in plain


def test_values_the_bus_would_refuse_are_kept_aside() -> None:
    """A typed key with a wrong type would fail its whole batch: renamed."""
    line = b'{"msg": "x", "fd": "seven", "lport": -1, "laddr": 5, "n": 123456789012345678901}'
    r = to_record(line, "stdout", "a", 1, 2)
    assert (r["app_fd"], r["app_lport"], r["app_laddr"]) == ("seven", -1, 5)
    assert "fd" not in r and "lport" not in r and "laddr" not in r
    assert r["n"] == "123456789012345678901"


def test_errno_in_prefers_the_longest_message() -> None:
    assert errno_in("read: connection reset by peer") == "ECONNRESET"
    assert errno_in("everything is fine") is None


# -- scenarios --------------------------------------------------------------

FOREIGN = """
name = "t"
summary = "s"
[[actors]]
name = "server"
command = ["examples/go/bin/server", "-addr", "127.0.0.1:9090"]
env = {{ LEAK = "true" }}
ready = {{ port = 9090 }}
stop_signal = "SIGINT"
{extra}
[[phases]]
name = "p"
duration_s = 1
commands = [{{ actor = "server", name = "start" }}]
"""


def scenario(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "t.toml"
    path.write_text(FOREIGN.format(extra=extra))
    return path


def test_a_foreign_actor_becomes_relay_arguments(tmp_path: Path) -> None:
    (actor,) = load(scenario(tmp_path)).actors
    assert actor.role == "foreign"
    i = actor.args.index("--command")
    assert json.loads(actor.args[i + 1]) == [str(GO_BIN / "server"), "-addr", "127.0.0.1:9090"]
    assert actor.args[actor.args.index("--env") + 1] == "LEAK=true"
    assert actor.args[actor.args.index("--ready-port") + 1] == "9090"
    assert actor.args[actor.args.index("--stop-signal") + 1] == "SIGINT"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("args = []", "unknown key `args`"),
        ("readdy = { port = 1 }", "did you mean `ready`"),
    ],
)
def test_foreign_actor_typos_are_refused(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        load(scenario(tmp_path, extra))


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('stop_signal = "SIGINT"', 'stop_signal = "SIGNOPE"', "stop_signal 'SIGNOPE'"),
        ("ready = { port = 9090 }", "ready = { port = 70000 }", "port from 1 to 65535"),
        ("ready = { port = 9090 }", "ready = { prot = 1 }", "did you mean `port`"),
        ('env = { LEAK = "true" }', 'env = { "1X" = "a" }', "give NAME"),
        ('command = ["examples', "command = [] #", "list of strings"),
    ],
)
def test_foreign_actor_bad_values_are_refused(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    path = scenario(tmp_path)
    path.write_text(path.read_text().replace(old, new))
    with pytest.raises(ScenarioError, match=message):
        load(path)


# -- the Go programs ----------------------------------------------------------


def test_the_go_bomb_and_multiplex_refuse_targets_outside_the_lab(go_bin: Path) -> None:
    """Refused before any connection: one line, exit 2."""
    for prog in ("bomb", "multiplex", "client"):
        out = subprocess.run(
            [str(go_bin / prog), "-target", "192.0.2.1:80"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert out.returncode == 2, (prog, out.stderr)
        assert out.stderr.strip().splitlines() == [
            f"{prog}: error: refusing target 192.0.2.1:80: load goes only to loopback or "
            "the lab's 198.18.0.0/15"
        ]


# -- the relay over a real bus ----------------------------------------------


def ready_report(lab: Lab, name: str) -> dict[str, Any]:
    """The relay's first progress report that says whether its program listens."""
    env = lab.wait_for(
        lambda e: e.kind is Kind.STATS and e.sender == name and "listening" in e.body,
        20,
        f"{name} listening or not",
    )
    return dict(env.body)


def test_the_relay_runs_the_leaking_go_server_and_ships_its_lines(lab: Lab, go_bin: Path) -> None:
    """start answers with the program's pid; the relay says when it listens;
    each JSON line arrives as a record under that pid; the leak shows as
    CLOSE_WAIT sockets still open in the program; stop sends the stop signal."""
    port = free_port()
    command = json.dumps([str(go_bin / "server"), "-addr", f"127.0.0.1:{port}"])
    lab.spawn(
        "foreign",
        "server",
        "--command",
        command,
        "--env",
        "LEAK=true",
        "--ready-port",
        str(port),
        "--stop-signal",
        "SIGINT",
    )
    lab.wait_for(is_ready("server"), 20, "relay ready")
    ack = lab.hub.command("server", "start", timeout_s=10)
    assert ack.body["ok"], ack.body
    pid = ack.body["result"]["pid"]
    assert ready_report(lab, "server")["listening"] is True
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", port)) as c:
            c.sendall(b"hi\n")
            assert c.recv(100) == b"ECHO: hi\n"
    lab.wait_for(
        lambda e: (
            e.kind is Kind.LOG and sum(r["event"] == "leaked" for r in lab.records("server")) >= 5
        ),
        10,
        "5 leaked records",
    )
    leaked = lab.records("server", "leaked")
    assert {r["pid"] for r in leaked} == {pid}
    assert all(r["lport"] == port and r["fd"] >= 0 for r in leaked)
    close_wait = subprocess.run(
        ["ss", "-Htn", "state", "close-wait", "sport", f"= :{port}"], capture_output=True, text=True
    ).stdout.splitlines()
    assert len(close_wait) == 5
    assert lab.stop("server") == 0
    (exited,) = lab.records("server", "exited")
    assert (exited["pid"], exited["exit_code"], exited["level"]) == (pid, 0, "info")
    assert [r["signal"] for r in lab.records("server", "stopping")] == ["interrupt"]


def test_never_listening_is_reported(lab: Lab) -> None:
    port = free_port()
    lab.spawn(
        "foreign", "idle", "--command", json.dumps(["sleep", "30"]), "--ready-port", str(port)
    )
    lab.wait_for(is_ready("idle"), 20, "relay ready")
    assert lab.hub.command("idle", "start", timeout_s=10).body["ok"]
    report = ready_report(lab, "idle")
    assert (report["listening"], report["error"]) == (
        False,
        f"sleep does not listen after 10s: it never listened on port {port}",
    )
    assert lab.stop("idle") == 0


def test_missing_program_is_refused(lab: Lab) -> None:
    lab.spawn("foreign", "ghost", "--command", json.dumps(["/nonexistent/prog"]))
    lab.wait_for(is_ready("ghost"), 20, "relay ready")
    ack = lab.hub.command("ghost", "start", timeout_s=10)
    assert (ack.body["ok"], ack.body["error"]) == (
        False,
        "cannot start /nonexistent/prog: no such program (for examples/go/bin: "
        "`make go` builds them)",
    )
    assert lab.stop("ghost") == 0


def test_a_phase_stop_signals_the_program_and_the_relay_stays(lab: Lab, go_bin: Path) -> None:
    """`set stop_program` (what a phase's `stop` becomes): the program gets
    its stop signal and exits; the relay records the exit, says done, and
    still answers until the run's own stop."""
    port = free_port()
    command = json.dumps([str(go_bin / "server"), "-addr", f"127.0.0.1:{port}"])
    lab.spawn(
        "foreign",
        "server",
        "--command",
        command,
        "--ready-port",
        str(port),
        "--stop-signal",
        "SIGINT",
    )
    lab.wait_for(is_ready("server"), 20, "relay ready")
    pid = lab.hub.command("server", "start", timeout_s=10).body["result"]["pid"]
    assert ready_report(lab, "server")["listening"] is True
    ack = lab.hub.command("server", "set", {"stop_program": True}, timeout_s=10)
    assert ack.body["ok"], ack.body
    done = lab.wait_for(
        lambda e: e.kind is Kind.STATS and e.sender == "server" and e.body.get("done"),
        20,
        "the relay's done report",
    )
    assert (done.body["exit_code"], done.body["running"]) == (0, False)
    (exited,) = lab.records("server", "exited")
    assert (exited["pid"], exited["level"]) == (pid, "info")
    assert [r["signal"] for r in lab.records("server", "signalled")] == ["SIGINT"]
    assert lab.procs["server"].poll() is None
    assert lab.stop("server") == 0


STOPPED = """
name = "foreign-stop"
summary = "a foreign program started and stopped by phase commands"

[lab]
ports = [9191]

[[actors]]
name = "server"
command = ["examples/go/bin/server", "-addr", "127.0.0.1:9191"]
ready = {{ port = 9191 }}
stop_signal = "SIGINT"

[[actors]]
name = "client"
command = ["examples/go/bin/client", "-target", "127.0.0.1:9191", "-conns", "3"]

[[phases]]
name = "up"
duration_s = 5
commands = [{{ actor = "server", name = "start" }}, {{ actor = "client", name = "start" }}]
until_done = ["client"]

[[phases]]
name = "down"
duration_s = {down_s}
commands = [{{ actor = "server", name = "stop" }}]
until_done = ["server"]

[expected]
connections = ">=3"
"""


@pytest.mark.root
@pytest.mark.bpf
@pytest.mark.netns
@pytest.mark.slow
def test_phase_commands_start_and_stop_a_foreign_program(tmp_path: Path, go_bin: Path) -> None:
    """In a real lab run: `start` spawns the Go server (the phase waits until it
    listens), the Go client's echoes pass, `stop` signals the server, which
    exits 0 and ends the phase; no actor crashed; exit 0."""
    path = tmp_path / "foreign-stop.toml"
    # A phase of 20 minutes: only the server's exit can end it before the
    # command's timeout (a hang here is the failure, no clock is compared).
    path.write_text(STOPPED.format(down_s=1200))
    out = tcplab("run", str(path), "--json", "--runs-dir", str(tmp_path / "runs"), timeout=600)
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-2000:])
    final = json.loads(out.stdout.strip().splitlines()[-1])
    run_dir = Path(final["run_dir"])
    meta = json.loads((run_dir / "run.json").read_text())
    assert not any(a["crashed"] for a in meta["actors"].values()), meta["actors"]
    records = [
        json.loads(x)
        for x in (run_dir / "events.jsonl").read_text().splitlines()
        if '"src":"app"' in x
    ]
    exited = [r for r in records if r["type"] == "exited" and r["actor"] == "server"]
    assert [(r["pid"], r["exit_code"]) for r in exited] == [(meta["programs"]["server"], 0)]
    assert sum(r["type"] == "close" and r["actor"] == "client" for r in records) == 3
