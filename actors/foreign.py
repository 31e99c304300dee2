"""The relay for a foreign program: any command as a lab actor.

    python -m actors.foreign --command '["examples/go/bin/server", "-addr", ":8080"]' \
        --env LEAK=true --ready-port 8080 --stop-signal SIGINT

The program does not speak the bus; this relay does it for it. On `start`
it spawns the program (in the relay's own namespace and process group),
answers with the program's pid, so the orchestrator can point the probes
at it, and reports `listening` once the program listens on --ready-port
(checked here, inside the actor's namespace): the orchestrator waits for
that before the phase goes on. Every line
the program writes to stdout or stderr goes onto the bus as an application
record (actors/lines.py). On `stop` the program gets --stop-signal, then
SIGKILL if it outlives the grace period; a phase's `stop` comes as `set
stop_program` and does the same while the relay stays to record the end.
A program that ends by itself is recorded with its exit code and reported
done.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from actors import runtime
from actors.lines import to_record
from actors.runtime import Runtime, UsageError
from lab.supervisor import PDEATHSIG

READY_S = 10.0  # how long a program may take to listen on its ready port
STOP_GRACE_S = 5.0
# /proc/net/tcp's state column for LISTEN.
TCP_LISTEN = "0A"

Line = tuple[str, int, bytes]  # stream, mono_ns at arrival, the line


def listening(port: int) -> bool:
    """Something in this network namespace listens on TCP `port`."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()  # sl local_address rem_address st ...
            if len(cols) > 3 and cols[3] == TCP_LISTEN and int(cols[1][-4:], 16) == port:
                return True
    return False


def _pump(stream: IO[bytes], name: str, out: queue.Queue[Line | None]) -> None:
    """Read one of the program's pipes line by line until it closes."""
    for line in iter(stream.readline, b""):
        out.put((name, time.monotonic_ns(), line.rstrip(b"\n")))
    out.put(None)


class Relay:
    def __init__(
        self,
        rt: Runtime,
        args: argparse.Namespace,
        command: list[str],
        env: dict[str, str],
        stop_signal: signal.Signals,
    ) -> None:
        self.rt = rt
        self.args = args
        self.command = command
        self.env = {**os.environ, **env}
        self.stop_signal = stop_signal
        self.proc: subprocess.Popen[bytes] | None = None
        self.lines: queue.Queue[Line | None] = queue.Queue()
        self.open_pipes = 0
        self.relayed = 0
        self.exit_code: int | None = None
        self.stopped_by_us = False
        # --ready-port: None until the program listens (True) or cannot (False).
        self.ready: bool | None = None
        self.ready_error = ""
        self.ready_deadline = 0.0
        self.kill_at = 0.0  # after a phase's stop: SIGKILL if still running then

    # -- start -----------------------------------------------------------------
    def start(self) -> dict[str, Any]:
        program = self.command[0]
        if "/" in program:
            found = os.access(Path(self.args.cwd or ".", program), os.X_OK)
        else:
            found = shutil.which(program, path=self.env.get("PATH")) is not None
        if not found:
            # setpriv would start and then fail to exec it: say so here.
            raise UsageError(
                f"cannot start {program}: no such program (for examples/go/bin: "
                "`make go` builds them)"
            )
        # --gate: the process waits at a shell's `read` until `set release`
        # (the tracer points the probes at its pid first); exec keeps the pid.
        gate = ["sh", "-c", 'read _ && exec "$@"', "sh"] if self.args.gate else []
        try:
            self.proc = subprocess.Popen(
                [*PDEATHSIG, *gate, *self.command],
                cwd=self.args.cwd,
                env=self.env,
                stdin=subprocess.PIPE if gate else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except OSError as e:
            raise UsageError(f"cannot start {self.command[0]}: {e.strerror or e}") from None
        self._record("spawned", argv=self.command, cwd=self.args.cwd or os.getcwd())
        for name, pipe in (("stdout", self.proc.stdout), ("stderr", self.proc.stderr)):
            assert pipe is not None
            threading.Thread(target=_pump, args=(pipe, name, self.lines), daemon=True).start()
            self.open_pipes += 1
        self.ready_deadline = time.monotonic() + READY_S
        return {"pid": self.proc.pid}

    def on_set(self, args: dict[str, Any]) -> dict[str, Any]:
        """`set release`: a gated program goes (its stdin then reads EOF).
        `set stop_program`: a phase's `stop` signals the program; the relay
        stays (it records the exit and says done), SIGKILL after the grace."""
        if args.get("release") and self.proc is not None and self.proc.stdin is not None:
            self.proc.stdin.write(b"go\n")
            self.proc.stdin.close()
            self.proc.stdin = None
            self._record("released")
        if args.get("stop_program") and self.proc is not None and self.exit_code is None:
            self.stopped_by_us = True
            self.proc.send_signal(self.stop_signal)
            self.kill_at = time.monotonic() + STOP_GRACE_S
            self._record("signalled", signal=self.stop_signal.name)
        return {
            "released": self.proc is not None and self.proc.stdin is None,
            "running": self.proc is not None and self.exit_code is None,
        }

    def _check_ready(self) -> None:
        """Once the program listens on --ready-port, say so at once (the
        orchestrator waits for it before the phase goes on)."""
        port = self.args.ready_port
        if not port or self.ready is not None or self.proc is None:
            return
        if listening(port):
            self.ready = True
            self._record("program_ready", port=port)
        elif self.exit_code is not None or time.monotonic() > self.ready_deadline:
            self.ready = False
            why = (
                f"exited with code {self.exit_code}"
                if self.exit_code is not None
                else f"does not listen after {READY_S:g}s"
            )
            self.ready_error = f"{self.command[0]} {why}: it never listened on port {port}"
            self._record("program_not_ready", level="error", port=port, reason=self.ready_error)
        else:
            return
        self.rt.report(self.progress())

    # -- the loop ----------------------------------------------------------------
    def loop(self) -> None:
        while not self.rt.stopping:
            self.relay()
            self._reap()
            self._check_ready()
            if self.kill_at and time.monotonic() > self.kill_at and self.exit_code is None:
                assert self.proc is not None
                self.proc.kill()
                self.kill_at = 0.0
            self.rt.service(20)
        self.stop()

    def relay(self) -> None:
        """Everything the program wrote so far, onto the bus."""
        while True:
            try:
                item = self.lines.get_nowait()
            except queue.Empty:
                return
            if item is None:
                self.open_pipes -= 1
                continue
            stream, mono_ns, line = item
            assert self.proc is not None
            record = to_record(line, stream, self.rt.name, self.proc.pid, mono_ns)
            self.relayed += 1
            if self.rt.events is not None:
                self.rt.events.log(record, mono_ns)
            else:
                print(json.dumps(record), file=sys.stderr)

    def _reap(self) -> None:
        if self.proc is None or self.exit_code is not None or self.proc.poll() is None:
            return
        self.exit_code = self.proc.returncode
        # Its last lines may still be in the pipes (a child it left may hold
        # them open: wait a little, not forever).
        deadline = time.monotonic() + 1.0
        while self.open_pipes and time.monotonic() < deadline:
            self.relay()
            time.sleep(0.01)
        self.relay()
        ours = self.stopped_by_us and self.exit_code in (0, -self.stop_signal, -signal.SIGKILL)
        level = "info" if ours or self.exit_code == 0 else "error"
        self._record("exited", level=level, exit_code=self.exit_code)
        self.rt.report(self.progress(done=True))

    def stop(self) -> None:
        if self.proc is not None and self.exit_code is None:
            self.stopped_by_us = True
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self._reap()

    def progress(self, done: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {
            "pid": self.proc.pid if self.proc else None,
            "lines": self.relayed,
            "running": self.proc is not None and self.exit_code is None,
        }
        if self.ready is not None:
            body.update(
                listening=self.ready, **({"error": self.ready_error} if not self.ready else {})
            )
        if done:
            body.update(done=True, exit_code=self.exit_code)
        return body

    def _record(self, event: str, level: str = "info", **fields: Any) -> None:
        """A record of the relay's own about the program (under its pid)."""
        assert self.proc is not None
        now = time.monotonic_ns()
        record = {
            "event": event,
            "actor": self.rt.name,
            "pid": self.proc.pid,
            "mono_ns": now,
            "wall": time.time(),
            "level": level,
            **fields,
        }
        if self.rt.events is not None:
            self.rt.events.log(record, now)
        else:
            print(json.dumps(record), file=sys.stderr)


def parse_command(text: str) -> list[str]:
    try:
        argv = json.loads(text)
    except ValueError:
        argv = None
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise UsageError(
            f"--command {text!r}: give a JSON list of strings, e.g. "
            '\'["examples/go/bin/server", "-addr", ":8080"]\''
        )
    return argv


def parse_env(items: list[str]) -> dict[str, str]:
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--env {item!r}: give NAME=VALUE")
        env[key] = value
    return env


def parse_signal(name: str) -> signal.Signals:
    try:
        return signal.Signals[name]
    except KeyError:
        raise UsageError(
            f"--stop-signal {name!r}: give a signal name such as SIGTERM or SIGINT"
        ) from None


def serve(args: argparse.Namespace) -> int:
    command, env = parse_command(args.command), parse_env(args.env)
    stop_signal = parse_signal(args.stop_signal)
    rt = Runtime("foreign", args)
    relay = Relay(rt, args, command, env, stop_signal)
    rt.on_start = relay.start
    rt.on_set = relay.on_set
    rt.progress = relay.progress
    rt.ready(command=relay.command)
    if not rt.attached:
        relay.start()
    if rt.wait_start():
        relay.loop()
    relay.stop()
    relay.relay()
    return rt.close()


def main(argv: list[str] | None = None) -> int:
    p = runtime.parser("foreign", "Run a program as a lab actor: its output lines as records.")
    p.add_argument("--command", required=True, help="the program and its arguments, a JSON list")
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable for the program (repeatable)",
    )
    p.add_argument("--cwd", default=None, help="the program's working directory")
    p.add_argument(
        "--ready-port",
        type=int,
        default=None,
        help="start is done when something listens on this TCP port",
    )
    p.add_argument("--stop-signal", default="SIGTERM", help="the signal `stop` sends")
    p.add_argument(
        "--gate", action="store_true", help="the program waits after spawn until `set release`"
    )
    args = p.parse_args(argv)
    return runtime.run(lambda: serve(args), "foreign")


if __name__ == "__main__":
    raise SystemExit(main())
