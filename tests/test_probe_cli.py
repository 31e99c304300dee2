"""`tcplab doctor` and `tcplab watch` as a user runs them: real processes, real eBPF."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from probes.doctor import headers_release
from probes.plan import make_plan

TCPLAB = str(Path(sys.executable).with_name("tcplab"))
# Under software emulation (the 6.1 VM of `make test-kernels`, scripts/kernels/guest.sh)
# everything runs about 10x slower, BPF compilation most: guest.sh sets the factor.
SLOW = float(os.environ.get("TCPLAB_TEST_SLOW", "1"))
DEADLINE_S = 30.0 * SLOW

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
    if mode == "tracepoint":
        lines.append("tcp_state: tracepoint (tracepoints sock:inet_sock_set_state)")
        for probe, names in calls.items():
            tps = sorted(f"syscalls:sys_{edge}_{c}" for c in names for edge in ("enter", "exit"))
            lines.append(f"{probe}: tracepoint (tracepoints {', '.join(tps)})")
    else:
        lines.append("tcp_state: kprobe (kprobes on tcp_set_state)")
        for probe, names in calls.items():
            fns = sorted(kallsyms_function(c) for c in names)
            lines.append(f"{probe}: kprobe (kprobes on {', '.join(fns)})")
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
    assert plan == [f"  {x}" for x in expected_plan(mode)]
    if mode == "tracepoint":
        assert "[ok] tracepoint sock:inet_sock_set_state: present" in lines
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
