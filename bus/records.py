"""The shapes of the records carried in LOG and KERNEL batches.

These are the join keys the correlator relies on. Both sides name a socket
by its *local* view: (laddr, lport, raddr, rport) for an application record,
(saddr, sport, daddr, dport) for a kernel event (the tracepoint reports the
socket's own source and destination). Addresses are text ("127.0.0.1",
"::1"), ports host-order ints, times CLOCK_MONOTONIC nanoseconds.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict


class AppRecord(TypedDict):
    """One structlog record from an actor (LOG body "records" item).

    `event` names the socket action: listen, connect, connect_failed, accept,
    accept_failed, send, recv, echo, peer_close, close, plus actor-specific
    progress events (e.g. "progress", "pool_ready"). Socket actions carry
    `fd` and the 4-tuple; failures carry `errno` and `error` (its name).
    """

    event: str
    actor: str  # the actor's name in the run, e.g. "server", "bomber"
    pid: int
    mono_ns: int
    wall: float  # time.time(), for display only
    level: str
    fd: NotRequired[int]
    laddr: NotRequired[str]
    lport: NotRequired[int]
    raddr: NotRequired[str]
    rport: NotRequired[int]
    errno: NotRequired[int]
    error: NotRequired[str]  # errno name, e.g. "EADDRNOTAVAIL", "EMFILE"
    open_fds: NotRequired[int]


class TcpStateEvent(TypedDict):
    """sock:inet_sock_set_state. pid/tid/comm are whoever was on the CPU
    (often a softirq), never the owner: the correlator finds the owner."""

    type: str  # "tcp_state"
    ts: int
    skaddr: int
    cpu_pid: int
    cpu_tid: int
    cpu_comm: str
    family: int  # 2 = AF_INET, 10 = AF_INET6
    saddr: str
    sport: int
    daddr: str
    dport: int
    old: str  # "ESTABLISHED", "FIN_WAIT1", ... (kernel names without TCP_)
    new: str


class AcceptEvent(TypedDict):
    """accept/accept4 exit: fd >= 0 on success, else errno > 0."""

    type: str  # "accept"
    ts: int  # at syscall exit
    pid: int
    tid: int
    comm: str
    syscall: str  # "accept4" or "accept"
    lfd: int
    fd: int
    errno: int
    family: int  # 0 when the caller passed no address buffer
    peer_addr: str
    peer_port: int
    dur_ns: int


class EpollEvent(TypedDict):
    """epoll_wait / epoll_pwait / epoll_pwait2 exit."""

    type: str  # "epoll"
    ts: int  # at syscall exit
    pid: int
    tid: int
    comm: str
    syscall: str
    epfd: int
    maxevents: int
    timeout_ms: int  # -1 blocks forever; epoll_pwait2's timespec in ms
    ready: int
    errno: int
    dur_ns: int


# The TCP states by the kernel's numbering (include/net/tcp_states.h).
TCP_STATES = (
    "UNKNOWN",
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "CLOSING",
    "NEW_SYN_RECV",
    "BOUND_INACTIVE",
)
