"""The kernel's own count of a BPF program's skipped runs (recursion_misses).

A tracepoint program is not run when the tracepoint fires on a CPU where a
BPF program is already running (trace_call_bpf's per-CPU bpf_prog_active):
a softirq that interrupts a program running in task context (a syscall or
tcp_probe hook in a socket's backlog) and retransmits a segment there finds
the CPU busy, and that event is lost without a trace. Any BPF program on
the machine counts, other tools' too. The kernel counts these per program
(5.12+) and shows them in the program fd's /proc fdinfo. Measured on 6.18
in lossy-link runs: 0 to 2 tcp_retransmit_skb runs skipped per run, each
one Tcp RetransSegs counted that no event shows.
"""

from __future__ import annotations

from pathlib import Path


def recursion_misses(prog_fd: int) -> int | None:
    """Runs of the program the kernel skipped, or None where it does not say (< 5.12)."""
    for line in Path(f"/proc/self/fdinfo/{prog_fd}").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == "recursion_misses":
            return int(value)
    return None
