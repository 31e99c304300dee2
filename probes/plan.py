"""Planning the attach: per probe, which hooks this kernel offers and how
records come out.

`make_plan()` decides at start, per probe, how it attaches (tracepoint where
the kernel has it, kprobe where not, or as forced by TCPLAB_ATTACH) and how
events come out (ring buffer from 5.8, perf buffer before, or as forced by
TCPLAB_DELIVERY). It reads tracefs, kallsyms and the kernel version only:
no bcc, so that `tcplab doctor` and `--help` work on a machine without it.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Collection
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from bus.internals import INTERNALS
from probes import rawtp, tpformat

# The TCP internals (INTERNALS, probes/tpformat.py) have no kprobe variant:
# raw tracepoints where the kernel's BTF allows (probes/rawtp.py), classic
# ones otherwise or when TCPLAB_ATTACH=tracepoint; each attaches the hooks
# this kernel has and says what it lacks.
PROBES = ("tcp_state", "accept", "epoll", "connect", "fdio", "proc", *INTERNALS)
# What runs unless asked otherwise: the internals cost a compilation and
# events on every data segment's path, so a scenario or a user asks for
# them (`[lab] internals = true`, `--internals`).
DEFAULT_PROBES = ("tcp_state", "accept", "epoll")
# Owners and the syscall barrier: `tcplab watch` loads them by default; lab
# runs not yet (the correlator does not read them). proc: watch -p only.
OWNER_PROBES = ("connect", "fdio")
TRACEFS_ROOTS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
# The kprobe PMU (>= 4.17) or the legacy kprobe_events file must exist for a
# kprobe to attach at all; neither exists with CONFIG_KPROBES off.
KPROBE_PMU = Path("/sys/bus/event_source/devices/kprobe")
RINGBUF_SINCE = (5, 8)
SYSCALL_PREFIXES = ("__x64_sys_", "__arm64_sys_", "__s390x_sys_", "__riscv_sys_", "sys_")


class ProbeError(RuntimeError):
    """The probes cannot run as asked; the message says what to do."""


@dataclass(frozen=True)
class Hook:
    kind: str  # "tracepoint", "raw_tracepoint", "kprobe" or "kretprobe"
    target: str  # "sock:inet_sock_set_state", or a kernel function
    fn: str  # the BPF function in the probe's .bpf.c


@dataclass
class ProbePlan:
    name: str
    mode: str | None  # "tracepoint", "raw_tracepoint", "kprobe", or None: cannot attach here
    hooks: list[Hook]
    why: str  # why this mode, or what is missing and how to fix it


@dataclass
class AttachPlan:
    delivery: str  # "ringbuf" or "perf"
    probes: dict[str, ProbePlan]

    def usable(self) -> list[str]:
        return [n for n, p in self.probes.items() if p.mode]

    def describe(self, names: Collection[str] | None = None) -> list[str]:
        """The delivery, then one line per probe (only `names` if given)."""
        lines = [f"delivery: {self.delivery}"]
        for p in self.probes.values():
            if names is None or p.name in names:
                lines.append(f"{p.name}: {p.mode or 'NOT ATTACHABLE'} ({p.why})")
        return lines

    def as_dict(self) -> dict[str, Any]:
        return {
            "delivery": self.delivery,
            "probes": {n: {"mode": p.mode, "why": p.why} for n, p in self.probes.items()},
        }


def tracefs() -> Path | None:
    for root in TRACEFS_ROOTS:
        if (root / "events").is_dir():
            return root
    return None


def tracepoint_exists(name: str) -> bool:
    root = tracefs()
    category, _, event = name.partition(":")
    return root is not None and (root / "events" / category / event / "format").exists()


def kprobes_supported() -> bool:
    root = tracefs()
    return KPROBE_PMU.exists() or (root is not None and (root / "kprobe_events").exists())


@lru_cache(maxsize=1)
def kernel_functions() -> frozenset[str]:
    """Function names in /proc/kallsyms (text symbols only)."""
    names = set()
    try:
        with open("/proc/kallsyms") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[1] in "tTwW":
                    names.add(parts[2])
    except OSError:
        pass
    return frozenset(names)


def syscall_function(name: str) -> str | None:
    """The kernel function a kprobe on syscall `name` attaches to, if any."""
    funcs = kernel_functions()
    for prefix in SYSCALL_PREFIXES:
        if prefix + name in funcs:
            return prefix + name
    return None


def kernel_version() -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", platform.release())
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


TRACEPOINT_HOOKS: dict[str, list[Hook]] = {
    "tcp_state": [Hook("tracepoint", "sock:inet_sock_set_state", "tp_inet_sock_set_state")],
    "accept": [
        Hook("tracepoint", f"syscalls:sys_{edge}_{call}", f"tp_{edge}_{call}")
        for call in ("accept4", "accept")
        for edge in ("enter", "exit")
    ],
    "epoll": [
        Hook("tracepoint", f"syscalls:sys_{edge}_{call}", f"tp_{edge}_{call}")
        for call in ("epoll_wait", "epoll_pwait", "epoll_pwait2")
        for edge in ("enter", "exit")
    ],
    **{
        probe: [Hook("tracepoint", tp, "tp_" + tp.partition(":")[2]) for tp in tps]
        for probe, tps in tpformat.TRACEPOINTS.items()
    },
    "connect": [
        Hook("tracepoint", "syscalls:sys_enter_connect", "tp_enter_connect"),
        Hook("tracepoint", "syscalls:sys_exit_connect", "tp_exit_connect"),
        Hook("tracepoint", "sock:inet_sock_set_state", "tp_inet_sock_set_state"),
    ],
    "fdio": [
        Hook("tracepoint", "syscalls:sys_exit_accept4", "tp_exit_accept4"),
        Hook("tracepoint", "syscalls:sys_exit_accept", "tp_exit_accept"),
        Hook("tracepoint", "syscalls:sys_enter_connect", "tp_enter_connect"),
        Hook("tracepoint", "syscalls:sys_enter_close", "tp_enter_close"),
        *(
            Hook("tracepoint", f"syscalls:sys_{edge}_{call}", f"tp_{edge}_{call}")
            for call in (
                "read",
                "readv",
                "recvfrom",
                "recvmsg",
                "write",
                "writev",
                "sendto",
                "sendmsg",
                "sendfile64",
            )  # fmt: skip
            for edge in ("enter", "exit")
        ),
        Hook("tracepoint", "sock:sock_recv_length", "tp_sock_recv_length"),
        Hook("tracepoint", "sock:sock_send_length", "tp_sock_send_length"),
    ],
    "proc": [
        Hook("tracepoint", "sched:sched_process_fork", "tp_sched_process_fork"),
        Hook("tracepoint", "sched:sched_process_exec", "tp_sched_process_exec"),
    ],
}

# Tracepoints a probe does without where the kernel lacks them, and what is
# lost then: epoll_pwait2 exists since 5.11, sock_{recv,send}_length since
# 6.3 (without them fdio's records carry no skaddr).
OPTIONAL_TRACEPOINTS = {
    "epoll": {"syscalls:sys_enter_epoll_pwait2", "syscalls:sys_exit_epoll_pwait2"},
    "fdio": {"sock:sock_recv_length", "sock:sock_send_length"},
}

# Probes with no kprobe variant besides the internals: a forced kprobe mode
# leaves them on their tracepoints.
TRACEPOINT_ONLY = ("fdio", "proc")

# Syscall name -> (entry BPF function, return BPF function) for kprobe mode.
KPROBE_SYSCALLS: dict[str, list[tuple[str, str, str]]] = {
    "accept": [
        ("accept4", "kp_enter_accept4", "kp_exit_accept"),
        ("accept", "kp_enter_accept", "kp_exit_accept"),
    ],
    "epoll": [
        ("epoll_wait", "kp_enter_epoll_wait", "kp_exit_epoll"),
        ("epoll_pwait", "kp_enter_epoll_pwait", "kp_exit_epoll"),
        ("epoll_pwait2", "kp_enter_epoll_pwait2", "kp_exit_epoll"),
    ],
    "connect": [("connect", "kp_enter_connect", "kp_exit_connect")],
}


def kprobe_hooks(probe: str) -> tuple[list[Hook], list[str]]:
    """The kprobe hooks for `probe` and the kernel functions that are missing."""
    if probe == "tcp_state":
        present = "tcp_set_state" in kernel_functions()
        return [Hook("kprobe", "tcp_set_state", "kp_tcp_set_state")], (
            [] if present else ["tcp_set_state"]
        )
    if probe not in KPROBE_SYSCALLS:
        return [], [f"a kprobe variant ({probe} is tracepoints only)"]
    hooks, missing = [], []
    if probe == "connect" and tracepoint_exists("sock:inet_sock_set_state"):
        # The skaddr comes from the state tracepoint in both modes.
        hooks.append(Hook("tracepoint", "sock:inet_sock_set_state", "tp_inet_sock_set_state"))
    for call, enter_fn, exit_fn in KPROBE_SYSCALLS[probe]:
        target = syscall_function(call)
        if target is None:
            # A call younger than the kernel (epoll_pwait2, 5.11) is left out
            # as its tracepoints are (OPTIONAL_TRACEPOINTS): 5.10's kprobe mode.
            if f"syscalls:sys_enter_{call}" not in OPTIONAL_TRACEPOINTS.get(probe, set()):
                missing.append(f"sys_{call}")
            continue
        hooks += [Hook("kprobe", target, enter_fn), Hook("kretprobe", target, exit_fn)]
    return hooks, missing


def _plan_internals(name: str, force: str) -> ProbePlan:
    """The TCP internals: raw tracepoints where this kernel's BTF allows
    (probes/rawtp.py), unless TCPLAB_ATTACH=tracepoint asks for the classic
    ones; the classic tracepoints otherwise. There is no kprobe variant."""
    hooks = [h for h in TRACEPOINT_HOOKS[name] if tracepoint_exists(h.target)]
    if not hooks:
        missing = ", ".join(h.target for h in TRACEPOINT_HOOKS[name])
        return ProbePlan(name, None, [], f"missing tracepoints {missing}: mount tracefs")
    gaps = [g for g in tpformat.gaps(tracefs(), name) if " missing:" in g]
    raw_why = "classic tracepoints asked for (TCPLAB_ATTACH=tracepoint)"
    if force != "tracepoint":
        raw_why = rawtp.unusable() or ""
    if not raw_why:
        events = [h.target.partition(":")[2] for h in hooks]
        raw = [Hook("raw_tracepoint", e, "raw_" + e) for e in events]
        why = f"raw tracepoints {', '.join(events)} (offsets from the kernel's BTF)"
        if force == "kprobe":
            why += " (no kprobe variant)"
        return ProbePlan(name, "raw_tracepoint", raw, why + "".join("; " + g for g in gaps))
    why = "tracepoints " + ", ".join(h.target for h in hooks) + f" (not raw: {raw_why})"
    if force == "kprobe":
        why += " (no kprobe variant)"
    gaps = tpformat.gaps(tracefs(), name)
    return ProbePlan(name, "tracepoint", hooks, why + ("; " + "; ".join(gaps) if gaps else ""))


def _plan_probe(name: str, force: str) -> ProbePlan:
    if name in INTERNALS:
        return _plan_internals(name, force)
    tp_hooks = TRACEPOINT_HOOKS[name]
    tp_missing = [h.target for h in tp_hooks if not tracepoint_exists(h.target)]
    kp_hooks, kp_missing = kprobe_hooks(name)
    if not kprobes_supported():
        kp_missing = ["kprobes (CONFIG_KPROBES is off in this kernel)"]
    optional = OPTIONAL_TRACEPOINTS.get(name, set())
    if tp_missing and set(tp_missing) <= optional:
        tp_hooks = [h for h in tp_hooks if h.target not in tp_missing]
        tp_missing = []
    tp_why = "tracepoints " + ", ".join(sorted({h.target for h in tp_hooks}))
    if name in TRACEPOINT_ONLY and not tp_missing:
        # No kprobe variant to force: it stays on its tracepoints.
        note = " (no kprobe variant)" if force == "kprobe" else ""
        return ProbePlan(name, "tracepoint", tp_hooks, tp_why + note)
    if force in ("auto", "tracepoint") and not tp_missing:
        return ProbePlan(name, "tracepoint", tp_hooks, tp_why)
    if force in ("auto", "kprobe") and not kp_missing and kp_hooks:
        why = "kprobes on " + ", ".join(sorted({h.target for h in kp_hooks}))
        if force == "auto":
            why += f" (missing {', '.join(tp_missing)})"
        return ProbePlan(name, "kprobe", kp_hooks, why)
    gaps = []
    if force in ("auto", "tracepoint") and tp_missing:
        gaps.append(
            f"missing tracepoints {', '.join(tp_missing)}: mount tracefs "
            "(mount -t tracefs tracefs /sys/kernel/tracing) or use a kernel "
            "with CONFIG_FTRACE_SYSCALLS"
        )
    if force in ("auto", "kprobe") and kp_missing:
        gaps.append(f"no kprobe: missing {', '.join(kp_missing)}")
    return ProbePlan(name, None, [], "; ".join(gaps))


def make_plan(attach: str | None = None, delivery: str | None = None) -> AttachPlan:
    """Choose, per probe, how to attach; read TCPLAB_ATTACH/TCPLAB_DELIVERY if not given."""
    attach = attach or os.environ.get("TCPLAB_ATTACH") or "auto"
    if attach not in ("auto", "tracepoint", "kprobe"):
        raise ProbeError(f"TCPLAB_ATTACH={attach!r}: use auto, tracepoint or kprobe")
    delivery = delivery or os.environ.get("TCPLAB_DELIVERY") or "auto"
    if delivery not in ("auto", "ringbuf", "perf"):
        raise ProbeError(f"TCPLAB_DELIVERY={delivery!r}: use auto, ringbuf or perf")
    if delivery == "auto":
        delivery = "ringbuf" if kernel_version() >= RINGBUF_SINCE else "perf"
    return AttachPlan(delivery, {n: _plan_probe(n, attach) for n in PROBES})
