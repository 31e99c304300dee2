"""`tcplab watch` run as a user runs it, for the watch tests
(tests/test_probe_cli_watch.py, tests/test_probe_cli_filters.py): the
process read with a deadline, its text lines' patterns (the README's sample
lines) and the TCP transitions the kernel reports. A test helper, not part
of the product.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import time
from collections.abc import Callable

import pytest
from lab_helpers import SLOW, TCPLAB

DEADLINE_S = 30.0 * SLOW

# `tcplab watch`'s text lines, one pattern per probe (the README's sample lines).
TIME = r"\s*\d+\.\d{6}"
TCP_LINE = re.compile(
    TIME + r" tcp    (?P<saddr>[0-9a-f.:]+):(?P<sport>\d+) -> (?P<daddr>[0-9a-f.:]+):(?P<dport>\d+)"
    r"  (?P<old>[A-Z_0-9]+) -> (?P<new>[A-Z_0-9]+)  sk=(?P<sk>0x[0-9a-f]+) on-cpu=\d+/\S.*"
)
ACCEPT_LINE = re.compile(
    TIME + r" (?P<syscall>accept4?) +pid=(?P<pid>\d+)/\S+ lfd=(?P<lfd>\d+) -> "
    r"(?:fd (?P<fd>\d+) from (?P<peer>[0-9a-f.:?]+):(?P<port>\d+)|(?P<err>E[A-Z]+))"
    r" \((?P<us>\d+) us\)"
)
EPOLL_LINE = re.compile(
    TIME + r" (?P<syscall>epoll_p?wait2?) pid=(?P<pid>\d+)/\S+ epfd=(?P<epfd>\d+) "
    r"max=(?P<max>\d+) timeout=(?P<timeout>-?\d+)ms -> (?:(?P<ready>\d+) ready|(?P<err>E[A-Z]+))"
    r" after (?P<ms>\d+\.\d{3}) ms"
)
FD_LINE = re.compile(
    TIME + r" fd     pid=(?P<pid>\d+)/\S+ fd=(?P<fd>\d+) (?P<what>eof|close|error E[A-Z]+) "
    r"\((?P<syscall>[a-z0-9]+)\) sk=(?P<sk>0x[0-9a-f]+) reads=\d+/\d+B writes=\d+/\d+B "
    r"eagain=\d+/\d+(?: eof@\d+\.\d{6})?"
)
CONNECT_LINE = re.compile(
    TIME + r" connect pid=(?P<pid>\d+)/\S+ fd=(?P<fd>\d+) -> (?P<daddr>[0-9a-f.:]+):(?P<dport>\d+)"
    r" (?P<result>ok|E[A-Z]+) sk=(?P<sk>0x[0-9a-f]+) \((?P<us>\d+) us\)"
)

# Server child transitions as the kernel reports them (tests/test_probe_kernel_states.py);
# the kprobe on tcp_set_state misses what inet_sk_set_state() sets.
SERVER_CHILD = [
    ("LISTEN", "SYN_RECV"), ("SYN_RECV", "ESTABLISHED"), ("ESTABLISHED", "CLOSE_WAIT"),
    ("CLOSE_WAIT", "LAST_ACK"), ("LAST_ACK", "CLOSE"),
]  # fmt: skip
CLIENT = [
    ("CLOSE", "SYN_SENT"), ("SYN_SENT", "ESTABLISHED"), ("ESTABLISHED", "FIN_WAIT1"),
    ("FIN_WAIT1", "FIN_WAIT2"), ("FIN_WAIT2", "CLOSE"),
]  # fmt: skip
LISTENER = [("CLOSE", "LISTEN"), ("LISTEN", "CLOSE")]
NOT_VIA_TCP_SET_STATE = {("LISTEN", "SYN_RECV"), ("CLOSE", "LISTEN")}


def seen_in_mode(seq: list[tuple[str, str]]) -> list[tuple[str, str]]:
    if os.environ.get("TCPLAB_ATTACH") == "kprobe":
        return [t for t in seq if t not in NOT_VIA_TCP_SET_STATE]
    return seq


class Watch:
    """`tcplab watch ARGS` in text mode: its lines read with a deadline."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [TCPLAB, "watch", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.lines: list[str] = []
        self._buf = b""
        assert self.proc.stderr is not None
        first = self.proc.stderr.readline().decode()
        if not first.startswith("attached: "):
            self.stop()
            pytest.fail(f"watch did not attach: {first!r}")

    def until(self, pred: Callable[[list[str]], bool], what: str) -> list[str]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + DEADLINE_S
        while not pred(self.lines):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                pytest.fail(f"watch printed no {what}; got {self.lines}")
            # Raw reads: a buffered readline would hide lines from select().
            if select.select([fd], [], [], 0.1)[0]:
                self._buf += os.read(fd, 65536)
                *done, self._buf = self._buf.split(b"\n")
                self.lines += [line.decode() for line in done]
        return self.lines

    def stop(self) -> tuple[int, str]:
        """Ctrl-C; the exit code and the last stderr line."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        out, err = self.proc.communicate(timeout=DEADLINE_S)
        self.lines += [line for line in (self._buf + out).decode().split("\n") if line]
        return self.proc.returncode, err.decode().strip().splitlines()[-1]


def tcp_lines(lines: list[str]) -> list[re.Match[str]]:
    matches = [TCP_LINE.fullmatch(line) for line in lines]
    assert None not in matches, f"lines not in watch's tcp format: {lines}"
    return [m for m in matches if m is not None]


def transitions(lines: list[str], sk: str | None = None) -> list[tuple[str, str]]:
    """The (old, new) states printed, of one socket if `sk` is given."""
    return [(m["old"], m["new"]) for m in tcp_lines(lines) if sk in (None, m["sk"])]


def socket_of(lines: list[str], sport: int, dport: int) -> str:
    """The sk= of the socket printed with these ports. The probes see every
    namespace of the machine, where other tests may use the same port numbers:
    the tests look at their own sockets by address."""
    (sk,) = {
        m["sk"] for m in tcp_lines(lines) if (int(m["sport"]), int(m["dport"])) == (sport, dport)
    }
    return sk


def closed(n: int) -> Callable[[list[str]], bool]:
    """At least n transitions to CLOSE printed."""
    return lambda lines: sum(" -> CLOSE  " in line for line in lines) >= n
