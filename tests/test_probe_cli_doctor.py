"""`tcplab doctor` as a user runs it: its checks, a real program loaded and
attached, and the attach plan derived here from tracefs and kallsyms."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from lab_helpers import SLOW, TCPLAB

from probes.doctor import headers_release

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
    # what its formats lack follows after "; " (tests/test_probe_internals_variants.py).
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
