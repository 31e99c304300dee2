"""The shape of every body on the bus, one typed definition per kind.

bus.schema decodes each body against its definition here (msgspec), so a
body that does not fit never reaches the live tally, the recording or the
correlator. Bodies are Structs: their fields are required unless they have
a default; a field with the default UNSET may be left out but is never nil.
Keys a Struct does not name are allowed (forward compatibility) and kept in
the body the consumers see, except in KERNEL and KERNEL_RAW batches, which are exactly
the kernel event records below.

The records carried in LOG and KERNEL batches are the join keys the
correlator relies on. Both sides name a socket by its *local* view:
(laddr, lport, raddr, rport) for an application record, (saddr, sport,
daddr, dport) for a kernel event (the tracepoint reports the socket's own
source and destination). Addresses are text ("127.0.0.1", "::1"), ports
host-order ints, times CLOCK_MONOTONIC nanoseconds.
"""

from __future__ import annotations

from typing import (
    Annotated,
    Any,
    Literal,
    NotRequired,
    TypedDict,
    get_args,
    get_origin,
    get_type_hints,
)

from msgspec import UNSET, Meta, Raw, Struct, UnsetType, defstruct

# Counts, pids, fds, ports, times: a negative one is a bug or an attack.
Count = Annotated[int, Meta(ge=0)]


class AppRecord(TypedDict):
    """One structlog record from an actor (LOG body "records" item).

    `event` names the socket action: listen, connect, connect_failed, accept,
    accept_failed, send, recv, echo, peer_close, close, plus actor-specific
    progress events (e.g. "progress", "pool_ready"). Socket actions carry
    `fd` and the 4-tuple; failures carry `errno` and `error` (its name).
    Any other key is allowed and kept.
    """

    event: str
    actor: str  # the actor's name in the run, e.g. "server", "bomber"
    pid: Count
    mono_ns: Count
    wall: float  # time.time(), for display only
    level: str
    fd: NotRequired[int]  # -1 for a socket already closed
    laddr: NotRequired[str]
    lport: NotRequired[Count]
    raddr: NotRequired[str]
    rport: NotRequired[Count]
    errno: NotRequired[Count]
    error: NotRequired[str]  # errno name, e.g. "EADDRNOTAVAIL", "EMFILE"
    open_fds: NotRequired[Count]


def typed(record: Any) -> type[Struct]:
    """A TypedDict of bus.records as a msgspec Struct with the same fields in
    the same order: required ones first, the NotRequired ones left out of
    the frame unless given. It encodes to the very map the dict would be, so
    the bus validates it against the one definition, `record` itself."""
    # From the hints, not __required_keys__: Python 3.11 counts every key as
    # required when the annotations are strings (from __future__ import annotations).
    hints = get_type_hints(record, include_extras=True)
    required = [(k, t) for k, t in hints.items() if get_origin(t) is not NotRequired]
    optional = [
        (k, get_args(t)[0] | UnsetType, UNSET)
        for k, t in hints.items()
        if get_origin(t) is NotRequired
    ]
    return defstruct(f"Typed{record.__name__}", [*required, *optional], omit_defaults=True)


# AppRecord as a Struct: actors build socket records with it positionally
# (event, actor, pid, mono_ns, wall, level, fd, laddr, lport, raddr, rport:
# bus/logging.py SocketLog.conn), and bus/schema.py checks every LOG record
# against it.
SocketRecord = typed(AppRecord)


class TcpStateEvent(TypedDict):
    """sock:inet_sock_set_state. pid/tid/comm are whoever was on the CPU
    (often a softirq), never the owner: the correlator finds the owner."""

    type: Literal["tcp_state"]
    ts: Count
    skaddr: Count
    cpu_pid: Count
    cpu_tid: Count
    cpu_comm: str
    family: int  # 2 = AF_INET, 10 = AF_INET6
    saddr: str
    sport: Count
    daddr: str
    dport: Count
    old: str  # "ESTABLISHED", "FIN_WAIT1", ... (kernel names without TCP_)
    new: str


class AcceptEvent(TypedDict):
    """accept/accept4 exit: fd >= 0 on success, else errno > 0."""

    type: Literal["accept"]
    ts: Count  # at syscall exit
    pid: Count
    tid: Count
    comm: str
    syscall: str  # "accept4" or "accept"
    lfd: int
    fd: int
    errno: Count
    family: int  # 0 when the caller passed no address buffer
    peer_addr: str
    peer_port: Count
    dur_ns: Count


class EpollEvent(TypedDict):
    """epoll_wait / epoll_pwait / epoll_pwait2 exit."""

    type: Literal["epoll"]
    ts: Count  # at syscall exit
    pid: Count
    tid: Count
    comm: str
    syscall: str
    epfd: int
    maxevents: int
    timeout_ms: int  # -1 blocks forever; epoll_pwait2's timespec in ms
    ready: int
    errno: Count
    dur_ns: Count


class ConnectEvent(TypedDict):
    """connect exit: the caller owns the socket skaddr (0 if no TCP socket
    went SYN_SENT inside the call); errno 0, EINPROGRESS or a failure."""

    type: Literal["connect"]
    ts: Count  # at syscall exit
    pid: Count
    tid: Count
    comm: str
    fd: int
    skaddr: Count
    errno: Count
    family: int
    daddr: str
    dport: Count
    dur_ns: Count


class FdEvent(TypedDict):
    """The syscall barrier (probes/fdio.bpf.c): a socket fd's EOF, close or
    error, with its running counters."""

    type: Literal["fdio"]
    ts: Count
    pid: Count
    tid: Count
    comm: str
    fd: int
    what: str  # "eof", "close", "error"
    syscall: str  # the call: "read", ..., "close"
    errno: Count  # of an error, else 0
    how: str  # who handed the fd over: "accept", "connect"
    skaddr: Count  # 0 until a read or write named the socket
    opened_ts: Count
    eof_ts: Count  # 0: no EOF read yet
    reads: Count
    read_bytes: Count
    writes: Count
    write_bytes: Count
    eagain_reads: Count
    eagain_writes: Count
    errors: Count


class ProcEvent(TypedDict):
    """A traced process forked (child: a process or a thread) or exec'd."""

    type: Literal["proc"]
    ts: Count
    pid: Count
    child: Count
    comm: str
    what: str  # "fork", "exec"


# A KERNEL batch holds the events of one probe: its name picks their record.
# A new probe adds its record here.
KERNEL_EVENTS: dict[str, type] = {
    "tcp_state": TcpStateEvent,
    "accept": AcceptEvent,
    "epoll": EpollEvent,
    "connect": ConnectEvent,
    "fdio": FdEvent,
    "proc": ProcEvent,
}


# -- bodies, one per Kind (bus.schema.BODIES maps them) -----------------------


class HelloBody(Struct):
    role: str
    pid: Count


class ReadyBody(Struct):
    pid: Count


class HeartbeatBody(Struct):
    pass


class CommandBody(Struct):
    name: str
    args: dict[str, Any]


class AckBody(Struct):
    command_seq: Count
    ok: bool
    error: str | UnsetType = UNSET
    result: dict[str, Any] | UnsetType = UNSET


class LogBody(Struct):
    records: list[AppRecord]


class KernelBody(Struct):
    """`events` is a list of KERNEL_EVENTS[probe], decoded in a second step
    (msgspec picks a list's item type before it sees `probe`)."""

    probe: str
    events: Raw


class ProgramStats(Struct):
    """One BPF program's running totals, as the probe process reports them."""

    events: Count
    drops: Count
    ring_used: Count | UnsetType = UNSET
    ring_peak: Count | UnsetType = UNSET
    ring_size: Count | UnsetType = UNSET
    retries: Count | UnsetType = UNSET  # ring submissions tried twice (probes/common.bpf.c emit)
    hits: Count | UnsetType = UNSET  # sampling probes: tracepoint hits before sampling


class EpollHistogram(Struct):
    """Per pid, log2 slots: blocked time (ns) and ready counts per wake-up."""

    pid: Count
    blocked_ns_log2: list[Count]
    ready_log2: list[Count]


class RecordLayout(Struct):
    """A C struct of probes/events.h as numpy describes it (bus/rawbatch.py
    Layout): `id` is a hash of the rest, checked by bus/rawbatch.py."""

    id: str
    names: list[str]
    formats: list[str]
    offsets: list[Count]
    itemsize: Count


class KernelRawBody(Struct):
    """Raw ring buffer records of one probe: whole structs of `layout`, back
    to back (bus/rawbatch.py decodes them; bus.schema checks they are whole)."""

    probe: str
    layout: RecordLayout
    records: bytes


class StatsBody(Struct):
    """Counters and samples. The observer sends `states` and `fds`, the probe
    process `programs` and `epoll_hist`, actors their own progress numbers
    (any other key) and `done` once their work is finished."""

    source: str
    states: dict[str, Count] | UnsetType = UNSET  # TCP state name -> sockets
    # pid -> open fds; the observer sends int pids, a JSON round trip makes them text
    fds: dict[int | str, Count] | UnsetType = UNSET
    sample_ns: Count | UnsetType = UNSET
    mono_ns: Count | UnsetType = UNSET
    programs: dict[str, ProgramStats] | UnsetType = UNSET
    epoll_hist: list[EpollHistogram] | UnsetType = UNSET
    done: bool | UnsetType = UNSET
    final: bool | UnsetType = UNSET


class EofBody(Struct):
    last_seq: Count


class WelcomeBody(Struct):
    """The answer to HELLO: the session to stamp on event frames, or why not."""

    ok: bool
    session: str = ""
    error: str | UnsetType = UNSET


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
