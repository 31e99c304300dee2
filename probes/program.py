"""Building a probe's program: its C text and the -D flags that configure it.

Every constant the C code and Python share is defined here (or, for the
record numbering that crosses the bus, in bus/) and handed to the compiler
as a -D flag; the C files only use the names. Nothing edits C source.
"""

from __future__ import annotations

from enum import IntEnum
from pathlib import Path

from bus.internals import SAMPLE_WHY, SOCK_EVENTS
from bus.rawbatch import (
    ACCEPT_SYSCALLS,
    EPOLL_SYSCALLS,
    FD_HOW,
    FD_KINDS,
    IO_SYSCALLS,
    PROC_KINDS,
)
from bus.records import TCP_STATES
from probes import rawtp, tpformat
from probes.plan import OPTIONAL_TRACEPOINTS, PROBES, ProbeError, tracefs, tracepoint_exists

HERE = Path(__file__).resolve().parent

# tcp_state sees ~10 events per connection; at ~18k connections/s that is
# ~15 MB/s of 88-byte records. On 2 shared cores the reader was measured
# descheduled for 100-190 ms at a time, once 1.2 s (at nice -5 too), which
# 4 MiB (~250 ms) did not ride out: 32 MiB (~2 s) does. It costs 32 MiB of
# kernel memory per probe process and nothing per event.
RING_PAGES = {
    "tcp_state": 8192,
    "accept": 1024,
    "epoll": 1024,
    "tcp_probe": 1024,
    "tcp_events": 1024,
    # connect and fdio send a record per connection at most (fdio: EOF,
    # close, errors; never per read or write).
    "connect": 1024,
    "fdio": 2048,
    "proc": 64,
}
# Socket fds the syscall barrier accounts at once (fdio.bpf.c `socks`, an
# LRU hash, preallocated: ~110 bytes each, 14 MiB of kernel memory).
FDIO_SOCKS = 131072

# The struct each probe writes (probes/events.h): the shared output helper
# in common.bpf.c takes a pointer to it, so that bcc learns the record's
# layout from the submit call (table.event() and probes/layout.py need it).
EVENT_STRUCT = {
    "tcp_state": "tcp_state_event",
    "accept": "accept_event",
    "epoll": "epoll_call_event",
    "tcp_probe": "tcp_probe_event",
    "tcp_events": "tcp_sock_event",
    "connect": "connect_event",
    "fdio": "fd_event",
    "proc": "proc_event",
}

# tcp_probe: a socket whose cwnd, ssthresh and windows do not change gets
# one event per this many ms (a bulk transfer makes ~150k hits/s).
SAMPLE_MS = 20
# Probes that count their tracepoint hits apart from their events.
SAMPLING = ("tcp_probe",)


class Cfg(IntEnum):
    """Slots of common.bpf.c's `config` array (switches and settings)."""

    PIDS = 0  # filter by pid on
    LPORTS = 1  # filter by local port on
    RPORTS = 2  # filter by remote port on
    PORTS = 3  # filter by either port on
    EPOLL_AGG_ONLY = 4  # epoll: histograms only, no per-call events
    SELF_PID = 5  # the reader's own pid: never traced
    SAMPLE_MS = 6  # tcp_probe: at most one event per socket per this many ms (else on change)
    EITHER = 7  # tcp_state: a socket passes when its pid OR its ports match (tcplab trace)


# More attempts at a ring submission the kernel refused (common.bpf.c
# emit() says why): 15 was the most a refused one needed here.
RING_RETRIES = 32


class Cnt(IntEnum):
    """Slots of common.bpf.c's per-CPU `counters` array."""

    EVENTS = 0  # records handed to the channel
    DROPS = 1  # records the channel refused (full)
    RETRIES = 2  # ring buffer records refused once and tried again (up to RING_RETRIES times)
    HITS = 3  # sampling probes (tcp_probe): tracepoint hits, before filter and sampling


def constants() -> dict[str, int]:
    """Every shared constant by the name the C code uses."""
    out = {f"CFG_{c.name}": c.value for c in Cfg}
    out["CFG_MAX"] = len(Cfg)
    out |= {f"CNT_{c.name}": c.value for c in Cnt}
    out["CNT_MAX"] = len(Cnt)
    out |= {f"TCPLAB_SYS_{n.upper()}": i for i, n in enumerate(ACCEPT_SYSCALLS)}
    out |= {f"TCPLAB_SYS_{n.upper()}": i for i, n in enumerate(EPOLL_SYSCALLS)}
    out |= {f"TCPLAB_SAMPLE_{w.upper()}": i for i, w in enumerate(SAMPLE_WHY)}
    out |= {f"TCPLAB_EV_{w.upper()}": i for i, w in enumerate(SOCK_EVENTS)}
    out |= {f"TCPLAB_TCP_{n}": i for i, n in enumerate(TCP_STATES)}
    out |= {f"TCPLAB_FD_{n.upper()}": i for i, n in enumerate(FD_KINDS)}
    out |= {f"TCPLAB_IO_{n.upper()}": i for i, n in enumerate(IO_SYSCALLS)}
    out |= {f"TCPLAB_HOW_{n.upper()}": i for i, n in enumerate(FD_HOW)}
    out["TCPLAB_FDIO_SOCKS"] = FDIO_SOCKS
    out["TCPLAB_RING_RETRIES"] = RING_RETRIES
    out |= {f"TCPLAB_PROC_{n.upper()}": i for i, n in enumerate(PROC_KINDS)}
    return out


def program_text(name: str) -> str:
    """common.bpf.c followed by the probe's own file (see common.bpf.c for why)."""
    if name not in PROBES:
        raise ProbeError(f"unknown probe {name!r}: choose from {', '.join(PROBES)}")
    return (HERE / "common.bpf.c").read_text() + (HERE / f"{name}.bpf.c").read_text()


def cflags(name: str, mode: str, delivery: str) -> list[str]:
    """The compiler flags of probe `name` attached by `mode` ("tracepoint",
    "raw_tracepoint" or "kprobe") delivering through `delivery` ("ringbuf" or "perf")."""
    flags = [
        f"-I{HERE}",
        f"-DTCPLAB_RING_PAGES={RING_PAGES[name]}",
        f"-DTCPLAB_EVENT={EVENT_STRUCT[name]}",
    ]
    flags += [f"-D{k}={v}" for k, v in constants().items()]
    if mode == "raw_tracepoint":
        flags += ["-DTCPLAB_RAW", *rawtp.flags()]
    else:
        flags.append("-DTCPLAB_KPROBE" if mode == "kprobe" else "-DTCPLAB_TRACEPOINT")
    if delivery == "perf":
        flags.append("-DTCPLAB_PERFBUF")
    flags += tpformat.layout_flags(tracefs(), name)
    # A handler of a tracepoint this kernel lacks does not compile (bcc has no
    # struct for it): the C code keeps such handlers under #ifdef TCPLAB_TP_<event>.
    flags += [
        f"-DTCPLAB_TP_{tp.partition(':')[2]}"
        for tp in sorted(OPTIONAL_TRACEPOINTS.get(name, ()))
        if tracepoint_exists(tp)
    ]
    return flags
