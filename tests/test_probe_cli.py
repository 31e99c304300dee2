"""`tcplab doctor` and `tcplab watch` as a user runs them: real processes, real eBPF."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from probes.doctor import headers_release
from probes.plan import make_plan

TCPLAB = str(Path(sys.executable).with_name("tcplab"))
# Under software emulation (the 6.1 VM of `make test-kernels`, scripts/kernels/guest.sh)
# everything runs about 10x slower, BPF compilation most: guest.sh sets the factor.
SLOW = float(os.environ.get("TCPLAB_TEST_SLOW", "1"))
DEADLINE_S = 30.0 * SLOW
BTF_VMLINUX = Path("/sys/kernel/btf/vmlinux")

pytestmark = [pytest.mark.root, pytest.mark.bpf]


TRACEFS = next(
    (p for p in (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing")) if p.is_dir()),
    Path("/sys/kernel/tracing"),
)


def has_tracepoint(name: str) -> bool:
    category, _, event = name.partition(":")
    return (TRACEFS / "events" / category / event / "format").exists()


def kallsyms_function(syscall: str) -> str:
    """The syscall's wrapper in /proc/kallsyms (__x64_sys_accept4 on x86-64)."""
    names = {parts[2] for parts in map(str.split, Path("/proc/kallsyms").read_text().splitlines())}
    for prefix in ("__x64_sys_", "__arm64_sys_", "__s390x_sys_", "__riscv_sys_", "sys_"):
        if prefix + syscall in names:
            return prefix + syscall
    pytest.fail(f"no wrapper of sys_{syscall} in /proc/kallsyms")


def expected_plan(mode: str) -> list[str]:
    """The plan doctor must print, derived here from tracefs and kallsyms:
    every kernel this lab supports (>= 5.8) has the BPF ring buffer."""
    calls = {
        "accept": ["accept", "accept4"],
        "epoll": ["epoll_pwait", "epoll_wait"]
        + (["epoll_pwait2"] if has_tracepoint("syscalls:sys_enter_epoll_pwait2") else []),
    }
    lines = [f"delivery: {os.environ.get('TCPLAB_DELIVERY') or 'ringbuf'}"]
    io = ["read", "readv", "recvfrom", "recvmsg", "write", "writev", "sendto", "sendmsg"]
    fdio = [f"syscalls:sys_{edge}_{c}" for c in [*io, "sendfile64"] for edge in ("enter", "exit")]
    fdio += ["syscalls:sys_exit_accept", "syscalls:sys_exit_accept4"]
    fdio += ["syscalls:sys_enter_connect", "syscalls:sys_enter_close"]
    # The socket of a read or write, since 6.3; fdio goes without before.
    fdio += [t for t in ("sock:sock_recv_length", "sock:sock_send_length") if has_tracepoint(t)]
    proc = "sched:sched_process_exec, sched:sched_process_fork"
    if mode == "tracepoint":
        lines.append("tcp_state: tracepoint (tracepoints sock:inet_sock_set_state)")
        for probe, names in calls.items():
            tps = sorted(f"syscalls:sys_{edge}_{c}" for c in names for edge in ("enter", "exit"))
            lines.append(f"{probe}: tracepoint (tracepoints {', '.join(tps)})")
        lines.append(
            "connect: tracepoint (tracepoints sock:inet_sock_set_state, "
            "syscalls:sys_enter_connect, syscalls:sys_exit_connect)"
        )
        lines.append(f"fdio: tracepoint (tracepoints {', '.join(sorted(fdio))})")
        lines.append(f"proc: tracepoint (tracepoints {proc})")
    else:
        lines.append("tcp_state: kprobe (kprobes on tcp_set_state)")
        for probe, names in calls.items():
            fns = sorted(kallsyms_function(c) for c in names)
            lines.append(f"{probe}: kprobe (kprobes on {', '.join(fns)})")
        lines.append(
            f"connect: kprobe (kprobes on {kallsyms_function('connect')}, sock:inet_sock_set_state)"
        )
        lines.append(
            f"fdio: tracepoint (tracepoints {', '.join(sorted(fdio))} (no kprobe variant))"
        )
        lines.append(f"proc: tracepoint (tracepoints {proc} (no kprobe variant))")
    return lines


def test_doctor_checks_loads_a_program_and_prints_the_plan() -> None:
    """doctor succeeds, attaches tcp_state in the planned mode, reports kprobes
    as they are and prints exactly the plan (tracepoint here, either mode in the VM)."""
    r = subprocess.run([TCPLAB, "doctor"], capture_output=True, text=True, timeout=120 * SLOW)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    # auto takes the tracepoints wherever tracefs has them (it does on every kernel here).
    mode = "kprobe" if os.environ.get("TCPLAB_ATTACH") == "kprobe" else "tracepoint"
    assert any(
        line.startswith(f"[ok] self-check: loaded and attached tcp_state ({mode}, ")
        for line in lines
    )
    plan = lines[lines.index("attach plan:") + 1 :]
    plan = plan[: next((i for i, line in enumerate(plan) if not line.startswith("  ")), None)]
    core = expected_plan(mode)
    assert plan[: len(core)] == [f"  {x}" for x in core]
    # The TCP internals: tracepoints in either mode, those this kernel has;
    # what its formats lack follows after "; " (tests/test_probe_internals.py).
    events = [
        tp
        for tp in (
            "tcp:tcp_retransmit_skb",
            "tcp:tcp_retransmit_synack",
            "tcp:tcp_cong_state_set",
            "tcp:tcp_send_reset",
            "tcp:tcp_receive_reset",
            "sock:inet_sk_error_report",
        )
        if has_tracepoint(tp)
    ]
    # Raw tracepoints where the kernel has BTF, unless the classic ones are asked for.
    raw = os.environ.get("TCPLAB_ATTACH") != "tracepoint" and BTF_VMLINUX.exists()
    if raw:
        internals = [
            "  tcp_probe: raw_tracepoint (raw tracepoints tcp_probe ",
            "  tcp_events: raw_tracepoint (raw tracepoints "
            + ", ".join(tp.partition(":")[2] for tp in events)
            + " ",
        ]
    else:
        internals = [
            "  tcp_probe: tracepoint (tracepoints tcp:tcp_probe",
            f"  tcp_events: tracepoint (tracepoints {', '.join(events)}",
        ]
    assert len(plan) == len(core) + 2
    for line, start in zip(plan[len(core) :], internals, strict=True):
        assert line.startswith(start), line
        assert ("no kprobe variant" in line) == (mode == "kprobe")
    if mode == "tracepoint":
        assert "[ok] tracepoint sock:inet_sock_set_state: present" in lines
    # What a kernel lacks and the probes do without (epoll_pwait2 before
    # 5.11, the TCP internals' newer tracepoints) is "--", never "!!".
    assert [line for line in lines if line.startswith("[!!]")] == []
    # kprobes exist when the kernel offers their PMU or tracefs their control file.
    if (
        Path("/sys/bus/event_source/devices/kprobe").exists()
        or (TRACEFS / "kprobe_events").exists()
    ):
        assert "[ok] kprobes: supported" in lines
        assert "[ok] kprobe target tcp_set_state: in kallsyms" in lines
    else:
        assert any(line.startswith("[--] kprobes: not supported") for line in lines)
        assert any(line.startswith("[--] kprobe target tcp_set_state") for line in lines)


def test_headers_release_is_what_uname_r_says(tmp_path: Path) -> None:
    """UTS_RELEASE wins over kernel.release, which Debian sets to the upstream version."""
    (tmp_path / "include/config").mkdir(parents=True)
    (tmp_path / "include/generated").mkdir()
    (tmp_path / "include/config/kernel.release").write_text("6.1.192\n")
    assert headers_release(tmp_path) == "6.1.192"
    uts = tmp_path / "include/generated/utsrelease.h"
    uts.write_text('#define UTS_RELEASE "6.1.0-56-amd64"\n')
    assert headers_release(tmp_path) == "6.1.0-56-amd64"
    assert headers_release(tmp_path / "missing") is None


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


def test_watch_lport_shows_the_local_side_only() -> None:
    """-L PORT: the listener and the server's child (local port PORT), never
    the client, whose local port is its ephemeral one."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    w = Watch("-L", str(port), "--probe", "tcp_state")
    try:
        srv.listen()
        cli = socket.create_connection(("127.0.0.1", port))
        cport = cli.getsockname()[1]
        child, _ = srv.accept()
        cli.close()
        assert child.recv(1) == b""  # the client's FIN is in: the child closes second
        child.close()
        srv.close()
        w.until(closed(2), "closes of the child and the listener")
    finally:
        code, last = w.stop()
    assert code == 0 and last.startswith("drops: 0 (tcp_state ")
    assert {int(m["sport"]) for m in tcp_lines(w.lines)} == {port}
    listener, server = socket_of(w.lines, port, 0), socket_of(w.lines, port, cport)
    assert transitions(w.lines, listener) == seen_in_mode(LISTENER)
    assert transitions(w.lines, server) == seen_in_mode(SERVER_CHILD)
    # The child's first change names its own 4-tuple on every kernel (before
    # 6.15 the kernel reports the listener's: probes/tcp_state.bpf.c holds it).
    first = [
        (m["saddr"], int(m["sport"]), m["daddr"], int(m["dport"]))
        for m in tcp_lines(w.lines)
        if m["sk"] == server and (m["old"], m["new"]) == ("LISTEN", "SYN_RECV")
    ]
    want = [("127.0.0.1", port, "127.0.0.1", cport)]
    assert first == (want if os.environ.get("TCPLAB_ATTACH") != "kprobe" else [])


def test_watch_dport_shows_the_remote_side_only() -> None:
    """-D PORT: the client's socket (remote port PORT) from SYN_SENT, whose
    source port is still 0 (tcp_v4_connect sets the state before choosing it)."""
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    w = Watch("-D", str(port), "--probe", "tcp_state")
    try:
        cli = socket.create_connection(("127.0.0.1", port))
        cport = cli.getsockname()[1]
        child, _ = srv.accept()
        cli.close()
        assert child.recv(1) == b""
        child.close()
        w.until(closed(1), "the client's close")
    finally:
        code, last = w.stop()
        srv.close()
    assert code == 0 and last.startswith("drops: 0 (tcp_state ")
    assert {int(m["dport"]) for m in tcp_lines(w.lines)} == {port}
    client = socket_of(w.lines, cport, port)
    ours = [m for m in tcp_lines(w.lines) if m["sk"] == client]
    assert [(int(m["sport"]), int(m["dport"])) for m in ours] == [(0, port)] + [
        (cport, port)
    ] * 4, "\n".join(w.lines)
    assert transitions(w.lines, client) == CLIENT, "\n".join(w.lines)


def test_watch_lport_and_dport_together_select_one_connection() -> None:
    """-L A -D B: only the server child of the client bound to port B, its
    whole life, LISTEN -> SYN_RECV included (before 6.15 the kernel reports
    that change with the listener's ports, dport 0: the probe holds it until
    the child's own are known); the listener, the client and another
    client's connection stay out."""
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    chosen = socket.socket()
    chosen.bind(("127.0.0.1", 0))
    cport = chosen.getsockname()[1]
    w = Watch("-L", str(port), "-D", str(cport), "--probe", "tcp_state")
    try:
        other = socket.create_connection(("127.0.0.1", port))
        chosen.connect(("127.0.0.1", port))
        children = [srv.accept()[0] for _ in range(2)]
        for s in (other, chosen):
            s.close()
        for c in children:
            assert c.recv(1) == b""
            c.close()
        w.until(closed(1), "the chosen child's close")
    finally:
        code, last = w.stop()
        srv.close()
    assert code == 0 and last.startswith("drops: 0 (tcp_state ")
    assert {(int(m["sport"]), int(m["dport"])) for m in tcp_lines(w.lines)} == {(port, cport)}
    assert transitions(w.lines) == seen_in_mode(SERVER_CHILD)


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
