"""Loading and attaching the BPF programs, their filters, and draining them.

`ProbeSet` compiles each planned probe once (probes/program.py), attaches
it as planned (probes/plan.py), fills its filter maps, and hands what each
program wrote to a callback as raw records: bytes, whole structs of
events.h back to back, described by the probe's Layout (probes/layout.py).
Nothing here decodes a record; bus/rawbatch.py does, where it is needed.

bcc is imported inside the functions that need it, so that `tcplab --help`
and the planning code work on a machine without it.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
import select
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from bus.rawbatch import Layout
from probes.layout import event_layout
from probes.plan import PROBES, AttachPlan, Hook, ProbeError, ProbePlan
from probes.program import RING_PAGES, SAMPLE_MS, SAMPLING, Cfg, Cnt, cflags, program_text
from probes.progstats import recursion_misses
from probes.ring import RingReader

# Read rings from their mmap (fast, see probes/ring.py) only where the CPU's
# memory ordering makes that safe without barriers; else bcc's reader.
MMAP_READER = platform.machine() in ("x86_64", "amd64")
# A ring still holding this much after a drain is behind: at full bomber speed
# a 20 ms poll interval brings ~300 KB, so 1 MiB left means the reader lost
# ground (it was descheduled, or the ring held more than a read's cap).
BEHIND_BYTES = 1 << 20

# Called with a probe's name and the records one drain of its channel
# brought, in order, as bytes (whole records of the probe's layout): one
# call per drain, never per record.
Callback = Callable[[str, bytes], None]


@dataclass
class Filters:
    """What to trace; an empty set means everything.

    pids filter all probes (tcp_state by the on-CPU pid, then by socket).
    Ports filter tcp_state; accept and epoll have no ports to compare, so
    with port filters and no pid filter they report nothing.

    tcp_state wants both the pid and the ports to match, unless `either`:
    then one is enough. `tcplab trace` needs that: an accepted socket's
    transitions run in its peer's context (a pid it does not trace), and
    the traced program's listening ports catch them.
    """

    pids: set[int] = field(default_factory=set)
    lports: set[int] = field(default_factory=set)
    rports: set[int] = field(default_factory=set)
    ports: set[int] = field(default_factory=set)
    either: bool = False

    def __post_init__(self) -> None:
        for p in self.pids:
            if not 0 < p < 2**32:
                raise ProbeError(f"pid {p} is out of range: give a process id")
        for p in self.lports | self.rports | self.ports:
            if not 0 < p < 65536:
                raise ProbeError(f"port {p} is out of range: give 1..65535")


class Probe:
    """One compiled BPF program set (one .bpf.c), attached per its plan."""

    def __init__(self, plan: ProbePlan, delivery: str) -> None:
        from bcc import BPF  # lazily: see the module docstring

        self.name = plan.name
        self.plan = plan
        self.delivery = delivery
        if plan.mode is None:
            raise ProbeError(f"probe {self.name} cannot attach here: {plan.why}")
        text = program_text(self.name).encode()
        self.bpf = BPF(text=text, cflags=cflags(self.name, plan.mode, delivery))
        # What its records look like, from the compiler's view of events.h.
        self.layout: Layout = event_layout(self.bpf)
        self.attached: list[Hook] = []
        self.ring: RingReader | None = None
        self._pending: list[bytes] = []  # bcc's readers only: see open()
        self._callback: Callback | None = None
        self.lost = 0  # perf buffer only: records the kernel overwrote
        self._table: Any = None

    def attach(self) -> None:
        for hook in self.plan.hooks:
            if hook.kind == "tracepoint":
                self.bpf.attach_tracepoint(tp=hook.target.encode(), fn_name=hook.fn.encode())
            elif hook.kind == "raw_tracepoint":
                self.bpf.attach_raw_tracepoint(tp=hook.target.encode(), fn_name=hook.fn.encode())
            elif hook.kind == "kprobe":
                self.bpf.attach_kprobe(event=hook.target.encode(), fn_name=hook.fn.encode())
            else:
                self.bpf.attach_kretprobe(event=hook.target.encode(), fn_name=hook.fn.encode())
            self.attached.append(hook)

    def open(self, callback: Callback) -> None:
        table = self._table = self.bpf[b"events"]
        size = self.layout["itemsize"]
        self._callback = callback
        if self.delivery == "ringbuf" and MMAP_READER:
            self.ring = RingReader(table.map_fd, RING_PAGES[self.name] * mmap.PAGESIZE, size)
            return
        pending = self._pending

        def on_event(_ctx: Any, data: Any, _size: int) -> int:
            # A perf sample's size is padded: the record is the struct's size.
            pending.append(ctypes.string_at(data, size))
            return 0

        # bcc calls on_event once per record, inside the poll/consume call in
        # drain(); the records go to the callback together once that returns.
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
            records = self.ring.read()
        else:
            if self.delivery == "ringbuf":
                self.bpf.ring_buffer_consume()
            else:
                self.bpf.perf_buffer_poll(timeout=timeout_ms)
            records = b"".join(self._pending)
            self._pending.clear()
        if records:
            self._callback(self.name, records)

    def counters(self) -> dict[str, Any]:
        values = self.bpf[b"counters"]
        events = sum(values[ctypes.c_int(Cnt.EVENTS)])
        drops = sum(values[ctypes.c_int(Cnt.DROPS)]) + self.lost
        retries = sum(values[ctypes.c_int(Cnt.RETRIES)])
        if self.ring is not None:
            drops += self.ring.skipped
        out: dict[str, Any] = {"events": int(events), "drops": int(drops), "retries": int(retries)}
        if self.name in SAMPLING:
            out["hits"] = int(sum(values[ctypes.c_int(Cnt.HITS)]))
        # Events lost before any of the probe's code ran (probes/progstats.py).
        by_hook: dict[str, int] = {}
        for fn in self.bpf.funcs.values():
            n = recursion_misses(fn.fd)
            if n:
                by_hook[fn.name.decode()] = n
        out["misses"] = sum(by_hook.values())
        if by_hook:
            out["misses_by_hook"] = by_hook
        return out

    def set_filters(self, f: Filters) -> None:
        """Fill the filter maps, then switch each filter on (or off when empty)."""
        config = self.bpf[b"config"]
        for idx, table_name, values in (
            (Cfg.PIDS, "filter_pids", f.pids),
            (Cfg.LPORTS, "filter_lports", f.lports),
            (Cfg.RPORTS, "filter_rports", f.rports),
            (Cfg.PORTS, "filter_ports", f.ports),
        ):
            table = self.bpf[table_name.encode()]
            # Add the new keys before removing old ones so that an update
            # never passes through an empty (= everything) filter.
            for v in values:
                table[table.Key(v)] = table.Leaf(1)
            # In `either` mode tcp_state adds the ports traced pids listen on.
            keep_all = f.either and idx == Cfg.PORTS
            for key in list(table.keys()):
                if key.value not in values and not keep_all:
                    del table[key]
            config[ctypes.c_int(idx)] = ctypes.c_uint(1 if values else 0)
        config[ctypes.c_int(Cfg.EITHER)] = ctypes.c_uint(int(f.either))

    def set_value(self, idx: Cfg, value: int) -> None:
        self.bpf[b"config"][ctypes.c_int(idx)] = ctypes.c_uint(value)

    def close(self) -> None:
        if self.ring is not None:
            self.ring.close()
            self.ring = None
        self._table = None
        self.bpf.cleanup()
        self.attached = []


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
                p.set_value(Cfg.SELF_PID, os.getpid() if exclude_self else 0)
                p.set_value(Cfg.SAMPLE_MS, SAMPLE_MS)
        except BaseException:
            self.close()
            raise

    def layout(self, name: str) -> Layout:
        """The layout of probe `name`'s records, as the callback receives them."""
        return self.probes[name].layout

    def start(self, callback: Callback) -> None:
        """Open the channels, then attach everything; records flow to `callback`."""
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
            self.probes["epoll"].set_value(Cfg.EPOLL_AGG_ONLY, int(on))

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
