"""Load, attach, filter and drain the BPF programs in this directory.

`make_plan()` decides at start, per probe, how it attaches (tracepoint where
the kernel has it, kprobe where not, or as forced by TCPLAB_ATTACH) and how
events come out (ring buffer from 5.8, perf buffer before, or as forced by
TCPLAB_DELIVERY). `ProbeSet` compiles each probe once, attaches it, and
turns the kernel's records into dicts shaped like bus/records.py.

bcc is imported inside the functions that need it, so that `tcplab --help`
and the planning code work on a machine without it.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
import re
import select
import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

from bus.records import TCP_STATES

HERE = Path(__file__).resolve().parent
PROBES = ("tcp_state", "accept", "epoll")
TRACEFS_ROOTS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
# The kprobe PMU (>= 4.17) or the legacy kprobe_events file must exist for a
# kprobe to attach at all; neither exists with CONFIG_KPROBES off.
KPROBE_PMU = Path("/sys/bus/event_source/devices/kprobe")
RINGBUF_SINCE = (5, 8)
# Read rings from their mmap (fast, see RingReader) only where the CPU's
# memory ordering makes that safe without barriers; else bcc's reader.
MMAP_READER = platform.machine() in ("x86_64", "amd64")
# tcp_state sees ~10 events per connection; at ~18k connections/s that is
# ~15 MB/s of 88-byte records. On 2 shared cores the reader was measured
# descheduled for 100-190 ms at a time, once 1.2 s (at nice -5 too), which
# 4 MiB (~250 ms) did not ride out: 32 MiB (~2 s) does. It costs 32 MiB of
# kernel memory per probe process and nothing per event.
RING_PAGES = {"tcp_state": 8192, "accept": 1024, "epoll": 1024}
# At most this much is decoded per read, so that a full ring cannot hold the
# caller's loop (heartbeats, commands) for long; what is left is read at
# the next poll, which then does not wait (see ProbeSet.poll).
READ_MAX_BYTES = 4 << 20
# A ring still holding this much after a drain is behind: at full bomber speed
# a 20 ms poll interval brings ~300 KB, so 1 MiB left means the reader lost
# ground (it was descheduled, or the ring held more than READ_MAX_BYTES).
BEHIND_BYTES = 1 << 20
SYSCALL_PREFIXES = ("__x64_sys_", "__arm64_sys_", "__s390x_sys_", "__riscv_sys_", "sys_")

Event = dict[str, Any]
# Called with a probe's name and the events one drain of its channel
# brought, in order: one call per run, not per event, which at ~150k
# events/s is a cost of its own.
Callback = Callable[[str, list[Event]], None]


class ProbeError(RuntimeError):
    """The probes cannot run as asked; the message says what to do."""


@dataclass(frozen=True)
class Hook:
    kind: str  # "tracepoint", "kprobe" or "kretprobe"
    target: str  # "sock:inet_sock_set_state", or a kernel function
    fn: str  # the BPF function in the probe's .bpf.c


@dataclass
class ProbePlan:
    name: str
    mode: str | None  # "tracepoint", "kprobe", or None: cannot attach here
    hooks: list[Hook]
    why: str  # why this mode, or what is missing and how to fix it


@dataclass
class AttachPlan:
    delivery: str  # "ringbuf" or "perf"
    probes: dict[str, ProbePlan]

    def usable(self) -> list[str]:
        return [n for n, p in self.probes.items() if p.mode]

    def describe(self) -> list[str]:
        lines = [f"delivery: {self.delivery}"]
        for p in self.probes.values():
            lines.append(f"{p.name}: {p.mode or 'NOT ATTACHABLE'} ({p.why})")
        return lines

    def as_dict(self) -> dict[str, Any]:
        return {
            "delivery": self.delivery,
            "probes": {n: {"mode": p.mode, "why": p.why} for n, p in self.probes.items()},
        }


# --------------------------------------------------------------------------- planning


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
}

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
}


def kprobe_hooks(probe: str) -> tuple[list[Hook], list[str]]:
    """The kprobe hooks for `probe` and the kernel functions that are missing."""
    if probe == "tcp_state":
        present = "tcp_set_state" in kernel_functions()
        return [Hook("kprobe", "tcp_set_state", "kp_tcp_set_state")], (
            [] if present else ["tcp_set_state"]
        )
    hooks, missing = [], []
    for call, enter_fn, exit_fn in KPROBE_SYSCALLS[probe]:
        target = syscall_function(call)
        if target is None:
            missing.append(f"sys_{call}")
            continue
        hooks += [Hook("kprobe", target, enter_fn), Hook("kretprobe", target, exit_fn)]
    return hooks, missing


def _plan_probe(name: str, force: str) -> ProbePlan:
    tp_hooks = TRACEPOINT_HOOKS[name]
    tp_missing = [h.target for h in tp_hooks if not tracepoint_exists(h.target)]
    kp_hooks, kp_missing = kprobe_hooks(name)
    if not kprobes_supported():
        kp_missing = ["kprobes (CONFIG_KPROBES is off in this kernel)"]
    if name == "epoll" and tp_missing == [
        "syscalls:sys_enter_epoll_pwait2",
        "syscalls:sys_exit_epoll_pwait2",
    ]:
        # epoll_pwait2 only exists since 5.11: trace the other two without it.
        tp_hooks = [h for h in tp_hooks if "pwait2" not in h.target]
        tp_missing = []
    tp_why = "tracepoints " + ", ".join(sorted({h.target for h in tp_hooks}))
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


# --------------------------------------------------------------------------- decoding


def _addr_text(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    if family == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, raw)
    return ""


def _comm_text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


class _Memo(dict[Any, Any]):
    """A conversion remembered per distinct input: `memo[raw]`.

    A lab run sees a handful of addresses and command names over ~150k
    events/s, so a plain dict lookup (no Python call on a hit, unlike
    lru_cache) replaces nearly every inet_ntop and decode. Cleared when
    full, so that a machine-wide `tcplab watch` cannot grow it forever.
    """

    LIMIT = 4096

    def __init__(self, convert: Callable[[Any], Any]) -> None:
        super().__init__()
        self.convert = convert

    def __missing__(self, key: Any) -> Any:
        if len(self) >= self.LIMIT:
            self.clear()
        value = self[key] = self.convert(key)
        return value


# family -> raw 16 bytes -> text. Keyed by family first: the same bytes are a
# different address in AF_INET (first 4 bytes) and AF_INET6.
_ADDRS = _Memo(lambda family: _Memo(partial(_addr_text, family)))
_COMMS = _Memo(_comm_text)

# u8 state -> name; numbers a newer kernel adds come out as digits.
_STATE_NAMES = tuple(TCP_STATES[n] if n < len(TCP_STATES) else str(n) for n in range(256))


ACCEPT_SYSCALLS = ("accept", "accept4")
EPOLL_SYSCALLS = ("epoll_wait", "epoll_pwait", "epoll_pwait2")


Record = tuple[Any, ...]
# Records in, bus/records.py dicts out, a whole run of records per call.
Decoder = Callable[[Iterable[Record]], list[Event]]


def _at(names: list[str], *wanted: str) -> list[int]:
    """Positions of fields in a record; a field renamed in events.h fails here, at start."""
    return [names.index(n) for n in wanted]


# Each decoder is built from the field names of the record (which come from
# the C definition, see struct_of) and turns record tuples into the
# bus/records.py shape. They run at up to ~150k events/s in a process that
# gets half a core: positions are resolved once, and the per-event work is
# one dict display inside a list comprehension (no function call per
# event), flat indexing, and dict lookups for the conversions.
def tcp_state_decoder(names: list[str]) -> Decoder:
    ts, sk, pid, tid, comm, fam, sa, sp, da, dp, old, new = _at(
        names, "ts", "skaddr", "pid", "tid", "comm", "family",
        "saddr", "sport", "daddr", "dport", "oldstate", "newstate",
    )  # fmt: skip
    states, addrs, comms = _STATE_NAMES, _ADDRS, _COMMS

    def decode(records: Iterable[Record]) -> list[Event]:
        return [
            {
                "type": "tcp_state",
                "ts": v[ts],
                "skaddr": v[sk],
                "cpu_pid": v[pid],
                "cpu_tid": v[tid],
                "cpu_comm": comms[v[comm]],
                "family": v[fam],
                "saddr": addrs[v[fam]][v[sa]],
                "sport": v[sp],
                "daddr": addrs[v[fam]][v[da]],
                "dport": v[dp],
                "old": states[v[old]],
                "new": states[v[new]],
            }
            for v in records
        ]

    return decode


def accept_decoder(names: list[str]) -> Decoder:
    ts, pid, tid, comm, sc, lfd, fd, err, fam, pa, pp, dur = _at(
        names, "ts", "pid", "tid", "comm", "syscall", "lfd", "fd", "err",
        "family", "peer_addr", "peer_port", "dur_ns",
    )  # fmt: skip
    syscalls, addrs, comms = ACCEPT_SYSCALLS, _ADDRS, _COMMS

    def decode(records: Iterable[Record]) -> list[Event]:
        return [
            {
                "type": "accept",
                "ts": v[ts],
                "pid": v[pid],
                "tid": v[tid],
                "comm": comms[v[comm]],
                "syscall": syscalls[v[sc]],
                "lfd": v[lfd],
                "fd": v[fd],
                "errno": v[err],
                "family": v[fam],
                "peer_addr": addrs[v[fam]][v[pa]],
                "peer_port": v[pp],
                "dur_ns": v[dur],
            }
            for v in records
        ]

    return decode


def epoll_decoder(names: list[str]) -> Decoder:
    ts, pid, tid, comm, sc, epfd, maxev, tmo, ready, err, dur = _at(
        names, "ts", "pid", "tid", "comm", "syscall", "epfd", "maxevents",
        "timeout_ms", "ready", "err", "dur_ns",
    )  # fmt: skip
    syscalls, comms = EPOLL_SYSCALLS, _COMMS

    def decode(records: Iterable[Record]) -> list[Event]:
        return [
            {
                "type": "epoll",
                "ts": v[ts],
                "pid": v[pid],
                "tid": v[tid],
                "comm": comms[v[comm]],
                "syscall": syscalls[v[sc]],
                "epfd": v[epfd],
                "maxevents": v[maxev],
                "timeout_ms": v[tmo],
                "ready": v[ready],
                "errno": v[err],
                "dur_ns": v[dur],
            }
            for v in records
        ]

    return decode


# ctypes scalar types bcc uses for event fields -> struct codes.
_STRUCT_CODES = {
    ctypes.c_ulonglong: "Q",
    ctypes.c_longlong: "q",
    ctypes.c_ulong: "Q",
    ctypes.c_long: "q",
    ctypes.c_uint: "I",
    ctypes.c_int: "i",
    ctypes.c_ushort: "H",
    ctypes.c_short: "h",
    ctypes.c_ubyte: "B",
    ctypes.c_char: "c",
}


def struct_of(cls: Any) -> tuple[struct.Struct, list[str]]:
    """A struct.Struct equivalent to a ctypes.Structure, with its field names.

    The ctypes class is the one bcc derives from the C definition in
    events.h (table.event()), so this is a faster view of that one
    definition, not a second one: unpacking a tuple costs a fraction of a
    ctypes cast plus attribute reads.
    """
    fmt, pos, names = "=", 0, []
    for name, ctype in cls._fields_:
        f = getattr(cls, name)
        if f.offset > pos:
            fmt += f"{f.offset - pos}x"
        fmt += f"{f.size}s" if issubclass(ctype, ctypes.Array) else _STRUCT_CODES[ctype]
        pos = f.offset + f.size
        names.append(name)
    if ctypes.sizeof(cls) > pos:
        fmt += f"{ctypes.sizeof(cls) - pos}x"
    return struct.Struct(fmt), names


DECODERS: dict[str, Callable[[list[str]], Decoder]] = {
    "tcp_state": tcp_state_decoder,
    "accept": accept_decoder,
    "epoll": epoll_decoder,
}


# --------------------------------------------------------------------------- running


@dataclass
class Filters:
    """What to trace; an empty set means everything.

    pids filter all probes (tcp_state by the on-CPU pid, then by socket).
    Ports filter tcp_state; accept and epoll have no ports to compare, so
    with port filters and no pid filter they report nothing.
    """

    pids: set[int] = field(default_factory=set)
    lports: set[int] = field(default_factory=set)
    rports: set[int] = field(default_factory=set)
    ports: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        for p in self.pids:
            if not 0 < p < 2**32:
                raise ProbeError(f"pid {p} is out of range: give a process id")
        for p in self.lports | self.rports | self.ports:
            if not 0 < p < 65536:
                raise ProbeError(f"port {p} is out of range: give 1..65535")


# Indexes of common.bpf.c's config array and counters.
CFG_PIDS, CFG_LPORTS, CFG_RPORTS, CFG_PORTS, CFG_EPOLL_AGG_ONLY, CFG_SELF_PID = range(6)
CNT_EVENTS, CNT_DROPS = 0, 1


def _leading(values: list[int], value: int) -> int:
    """How many of `values`, from the first, equal `value`."""
    if values.count(value) == len(values):  # the usual case, at C speed
        return len(values)
    return next(i for i, v in enumerate(values) if v != value)


class RingReader:
    """Consume a BPF ring buffer straight from its mmap, in runs of records.

    bcc (libbpf underneath) calls back into Python once per record through
    ctypes, which costs microseconds per event: at a bomber's ~150k state
    events/s on 2 shared cores that reader fell behind and the ring filled
    (measured: 6-15% lost). This reader walks the same memory per the ring
    buffer's stable ABI (>= 5.8, kernel/bpf/ringbuf.c): page 0 holds the
    consumer position (we write it), page 1 the producer position, then the
    data pages, mapped twice in a row so that a run of records that wraps is
    still contiguous. Each record starts with an 8-byte header: u32 length
    with a busy bit (reserved, still being written: stop there) and a
    discard bit (skip it), u32 page offset; records are 8-byte aligned.

    Every program submits exactly one struct per record
    (events.ringbuf_output(e, sizeof(*e), ...)), so records sit at a fixed
    stride and a whole run decodes with one struct.iter_unpack: the
    per-record Python work is the decoder's dict, nothing else. The lengths
    of all pending records are read first (one strided memoryview copy),
    and only the leading run whose lengths say "committed, not discarded,
    our size" is decoded; anything else is handled one record at a time.

    It relies on x86-64 ordering loads with loads and stores with stores
    (TSO): every header is read before the records it vouches for, the
    consumer position written after them. Weaker CPUs (arm64) need barriers
    Python cannot issue, so there the loader keeps bcc's reader (see
    MMAP_READER).
    """

    BUSY = 1 << 31
    DISCARD = 1 << 30
    HDR = 8
    HEADER_FIELD = "_ringbuf_len"  # the name of the header's length in the decoder's tuples

    def __init__(self, map_fd: int, capacity: int, record: struct.Struct, decode: Decoder) -> None:
        page = mmap.PAGESIZE
        self.capacity = capacity
        self.mask = capacity - 1
        self.length = record.size  # the header's length field of a record of ours
        self.stride = (self.HDR + record.size + 7) & ~7
        # Header (length, page offset), the record, the padding to 8 bytes:
        # iter_unpack walks a run with it, header length first in each tuple.
        tail = self.stride - self.HDR - record.size
        self.run = struct.Struct("=I4x" + record.format.lstrip("=@<>!") + f"{tail}x")
        self.decode = decode  # given the tuples of a run, HEADER_FIELD first in each
        self.skipped = 0  # records committed with another size: not ours, counted as drops
        self._cons = mmap.mmap(
            map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0
        )
        self._data = mmap.mmap(
            map_fd, page + 2 * capacity, mmap.MAP_SHARED, mmap.PROT_READ, offset=page
        )
        self._page = page
        self.peak = 0

    def used(self) -> int:
        prod = struct.unpack_from("=Q", self._data, 0)[0]
        cons = struct.unpack_from("=Q", self._cons, 0)[0]
        return int(prod - cons)

    def read(self) -> list[Event]:
        """The committed records not yet consumed (up to READ_MAX_BYTES), decoded, in
        order; then consume them."""
        cons = struct.unpack_from("=Q", self._cons, 0)[0]
        prod = struct.unpack_from("=Q", self._data, 0)[0]
        self.peak = max(self.peak, prod - cons)
        stride, ours, base, mask = self.stride, self.length, self._page, self.mask
        prod = min(prod, cons + READ_MAX_BYTES // stride * stride)
        out: list[Event] = []
        # The kernel may only reuse this memory once the consumer position
        # moves past it (below), so decoding straight from the view is safe.
        with memoryview(self._data) as data:
            while cons < prod:
                start = base + (cons & mask)
                n = (prod - cons) // stride
                lengths = data[start : start + n * stride].cast("I")[:: stride // 4].tolist()
                run = _leading(lengths, ours)
                if run:
                    out += self.decode_run(data[start : start + run * stride])
                    cons += run * stride
                    continue
                # One record that cannot start a run: busy, discarded, of
                # another size, or ours with the read's cap inside it (which
                # records of another size before it can cause).
                length = struct.unpack_from("=I", data, start)[0]
                if length & self.BUSY:
                    break
                if length == ours:
                    out += self.decode_run(data[start : start + stride])
                elif not length & self.DISCARD:
                    self.skipped += 1
                cons += ((length & ~(self.BUSY | self.DISCARD)) + self.HDR + 7) & ~7
        struct.pack_into("=Q", self._cons, 0, cons)
        return out

    def decode_run(self, buf: memoryview) -> list[Event]:
        """Decode a buffer of whole committed records of ours, back to back."""
        return self.decode(self.run.iter_unpack(buf))

    def close(self) -> None:
        self._cons.close()
        self._data.close()


class Probe:
    """One compiled BPF program set (one .bpf.c), attached per its plan."""

    def __init__(self, plan: ProbePlan, delivery: str, *, kprobe_compile_only: bool = False):
        from bcc import BPF  # lazily: see the module docstring

        self.name = plan.name
        self.plan = plan
        self.delivery = delivery
        mode = "kprobe" if kprobe_compile_only else plan.mode
        if mode is None:
            raise ProbeError(f"probe {self.name} cannot attach here: {plan.why}")
        text = program_text(self.name).encode()
        self.bpf = BPF(text=text, cflags=cflags(self.name, mode, delivery))
        self.attached: list[Hook] = []
        self.ring: RingReader | None = None
        self._decode: Decoder | None = None  # bcc's readers only: see open()
        self._pending: list[Record] = []
        self._callback: Callback | None = None
        self.lost = 0  # perf buffer only: records the kernel overwrote
        self._table: Any = None

    def attach(self) -> None:
        for hook in self.plan.hooks:
            if hook.kind == "tracepoint":
                self.bpf.attach_tracepoint(tp=hook.target.encode(), fn_name=hook.fn.encode())
            elif hook.kind == "kprobe":
                self.bpf.attach_kprobe(event=hook.target.encode(), fn_name=hook.fn.encode())
            else:
                self.bpf.attach_kretprobe(event=hook.target.encode(), fn_name=hook.fn.encode())
            self.attached.append(hook)

    def open(self, callback: Callback) -> None:
        from bcc.table import _get_event_class  # what table.event() decodes with

        table = self._table = self.bpf[b"events"]
        event_class = _get_event_class(table)
        record, names = struct_of(event_class)
        self._callback = callback
        if self.delivery == "ringbuf" and MMAP_READER:
            capacity = RING_PAGES[self.name] * mmap.PAGESIZE
            decode = DECODERS[self.name]([RingReader.HEADER_FIELD, *names])
            self.ring = RingReader(table.map_fd, capacity, record, decode)
            return
        decode = DECODERS[self.name](names)
        arrays = {n for n, c in event_class._fields_ if issubclass(c, ctypes.Array)}
        pending = self._pending

        def on_event(_ctx: Any, data: Any, _size: int) -> int:
            # Through self, not the table: close() drops the table before
            # bcc's cleanup, which a closure holding it would outlive.
            assert self._table is not None
            e = self._table.event(data)
            pending.append(
                tuple(bytes(getattr(e, n)) if n in arrays else getattr(e, n) for n in names)
            )
            return 0

        # bcc calls on_event once per record, inside the poll/consume call in
        # drain(); the records are decoded together once that returns.
        self._decode = decode
        if self.delivery == "ringbuf":
            table.open_ring_buffer(on_event)
            return

        def on_lost(count: int) -> None:
            self.lost += count

        table.open_perf_buffer(on_event, page_cnt=RING_PAGES[self.name] // 4, lost_cb=on_lost)

    def ring_fd(self) -> int | None:
        return self.bpf[b"events"].map_fd if self.delivery == "ringbuf" else None

    def drain(self, timeout_ms: int = 0) -> None:
        assert self._callback is not None
        if self.ring is not None:
            # One read per call, so that a flood cannot starve the caller's
            # loop; what is left keeps the (level-triggered) ring fd readable.
            events = self.ring.read()
        else:
            if self.delivery == "ringbuf":
                self.bpf.ring_buffer_consume()
            else:
                self.bpf.perf_buffer_poll(timeout=timeout_ms)
            assert self._decode is not None
            events = self._decode(self._pending)
            self._pending.clear()
        if events:
            self._callback(self.name, events)

    def counters(self) -> dict[str, int]:
        values = self.bpf[b"counters"]
        events = sum(values[ctypes.c_int(CNT_EVENTS)])
        drops = sum(values[ctypes.c_int(CNT_DROPS)]) + self.lost
        if self.ring is not None:
            drops += self.ring.skipped
        return {"events": int(events), "drops": int(drops)}

    def set_filters(self, f: Filters) -> None:
        """Fill the filter maps, then switch each filter on (or off when empty)."""
        config = self.bpf[b"config"]
        for idx, table_name, values in (
            (CFG_PIDS, "filter_pids", f.pids),
            (CFG_LPORTS, "filter_lports", f.lports),
            (CFG_RPORTS, "filter_rports", f.rports),
            (CFG_PORTS, "filter_ports", f.ports),
        ):
            table = self.bpf[table_name.encode()]
            # Add the new keys before removing old ones so that an update
            # never passes through an empty (= everything) filter.
            for v in values:
                table[table.Key(v)] = table.Leaf(1)
            for key in list(table.keys()):
                if key.value not in values:
                    del table[key]
            config[ctypes.c_int(idx)] = ctypes.c_uint(1 if values else 0)

    def set_value(self, idx: int, value: int) -> None:
        self.bpf[b"config"][ctypes.c_int(idx)] = ctypes.c_uint(value)

    def close(self) -> None:
        if self.ring is not None:
            self.ring.close()
            self.ring = None
        self._table = None
        self.bpf.cleanup()
        self.attached = []


def program_text(name: str) -> str:
    """common.bpf.c followed by the probe's own file (see common.bpf.c for why)."""
    if name not in PROBES:
        raise ProbeError(f"unknown probe {name!r}: choose from {', '.join(PROBES)}")
    return (HERE / "common.bpf.c").read_text() + (HERE / f"{name}.bpf.c").read_text()


def cflags(name: str, mode: str, delivery: str) -> list[str]:
    flags = [f"-I{HERE}", f"-DTCPLAB_RING_PAGES={RING_PAGES[name]}"]
    flags.append("-DTCPLAB_KPROBE" if mode == "kprobe" else "-DTCPLAB_TRACEPOINT")
    if delivery == "perf":
        flags.append("-DTCPLAB_PERFBUF")
    return flags


class ProbeSet:
    """Every attachable probe, compiled once, drained together."""

    def __init__(
        self,
        plan: AttachPlan,
        names: Iterable[str] = PROBES,
        filters: Filters | None = None,
        *,
        exclude_self: bool = True,
    ) -> None:
        if os.geteuid() != 0:
            raise ProbeError("loading eBPF programs needs root: run with sudo")
        try:
            import bcc  # noqa: F401
        except ImportError:
            raise ProbeError(
                "bcc is not importable: install python3-bpfcc (sudo scripts/provision.sh) "
                "and use a venv made with --system-site-packages"
            ) from None
        self.plan = plan
        wanted = list(names)
        unusable = [n for n in wanted if not plan.probes[n].mode]
        if unusable:
            reasons = "; ".join(f"{n}: {plan.probes[n].why}" for n in unusable)
            raise ProbeError(
                f"cannot attach {', '.join(unusable)} here ({reasons}); run `tcplab doctor`"
            )
        self.filters = filters or Filters()
        self.probes: dict[str, Probe] = {}
        self._epoll = select.epoll()
        self._by_fd: dict[int, Probe] = {}
        self._behind = False
        try:
            for n in wanted:
                p = Probe(plan.probes[n], plan.delivery)
                self.probes[n] = p
                # Filters go in before attaching: no unfiltered event slips out.
                p.set_filters(self.filters)
                p.set_value(CFG_SELF_PID, os.getpid() if exclude_self else 0)
        except BaseException:
            self.close()
            raise

    def start(self, callback: Callback) -> None:
        """Open the channels, then attach everything; events flow to `callback`."""
        try:
            for p in self.probes.values():
                p.open(callback)
                fd = p.ring_fd()
                if fd is not None:
                    # A ring buffer map fd is pollable: it becomes readable
                    # when the kernel has submitted records.
                    self._epoll.register(fd, select.EPOLLIN)
                    self._by_fd[fd] = p
            for p in self.probes.values():
                p.attach()
        except Exception as e:
            self.close()
            raise ProbeError(f"attaching the probes failed: {e}; run `tcplab doctor`") from e

    def poll(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for events and deliver all that are ready."""
        if self.plan.delivery == "ringbuf":
            # The programs submit without waking us (TCPLAB_RB_FLAGS), so the
            # wait is a plain sleep unless an fd happens to be ready; every
            # ring is drained after it either way. No sleep while a ring is
            # behind: a reader starved of CPU for a while catches up first.
            if not self._behind:
                self._epoll.poll(timeout_s)
            for p in self.probes.values():
                p.drain()
            self._behind = any(
                p.ring is not None and p.ring.used() >= BEHIND_BYTES for p in self.probes.values()
            )
        else:
            per_probe_ms = max(1, int(timeout_s * 1000 / max(1, len(self.probes))))
            for p in self.probes.values():
                p.drain(per_probe_ms)

    def drain_all(self) -> None:
        """Deliver whatever is left (before stopping)."""
        for p in self.probes.values():
            p.drain(0)
            while p.ring is not None and p.ring.used():
                p.drain(0)

    def set_filters(self, filters: Filters) -> None:
        self.filters = filters
        for p in self.probes.values():
            p.set_filters(filters)

    def set_epoll_aggregate_only(self, on: bool) -> None:
        if "epoll" in self.probes:
            self.probes["epoll"].set_value(CFG_EPOLL_AGG_ONLY, int(on))

    def stats(self) -> dict[str, Any]:
        programs: dict[str, Any] = {}
        for name, p in self.probes.items():
            entry: dict[str, Any] = dict(p.counters())
            if p.ring is not None:
                entry["ring_used"] = p.ring.used()
                entry["ring_peak"] = p.ring.peak
                entry["ring_size"] = p.ring.capacity
                p.ring.peak = 0
            programs[name] = entry
        return {"programs": programs, "epoll_hist": self.epoll_histograms()}

    def epoll_histograms(self) -> list[dict[str, Any]]:
        """Per pid: log2 slots of blocked ns and of ready counts (running totals)."""
        if "epoll" not in self.probes:
            return []
        bpf = self.probes["epoll"].bpf
        out: dict[int, dict[str, list[int]]] = {}
        tables = (("blocked_hist", "blocked_ns_log2"), ("ready_hist", "ready_log2"))
        for table_name, label in tables:
            for k, v in bpf[table_name.encode()].items():
                slots = out.setdefault(k.pid, {"blocked_ns_log2": [], "ready_log2": []})[label]
                if len(slots) <= k.slot:
                    slots.extend([0] * (k.slot + 1 - len(slots)))
                slots[k.slot] += int(v.value)
        return [{"pid": pid, **h} for pid, h in sorted(out.items())]

    def close(self) -> None:
        """Detach and free everything; safe to call twice."""
        for fd in list(self._by_fd):
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass
        self._by_fd.clear()
        for p in list(self.probes.values()):
            p.close()
        self.probes.clear()
        self._epoll.close()
