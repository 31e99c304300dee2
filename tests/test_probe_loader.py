"""Attach planning, settings and the variants that cannot attach here.

This kernel has no kprobes (CONFIG_KPROBES off), so the kprobe variants are
proven by compiling them and loading every function through the verifier
without attaching; the perf buffer fallback (for kernels < 5.8) is proven by
running it for real, since perf buffers work on this kernel too.
"""

from __future__ import annotations

import mmap
import os
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lab_helpers import KERNEL, SLOW

from bus.rawbatch import make_body
from bus.rawconvert import batch_events
from probes import loader, ring
from probes.loader import Filters, ProbeSet
from probes.plan import INTERNALS, KPROBE_SYSCALLS, PROBES, ProbeError, make_plan
from probes.program import cflags, program_text
from probes.ring import RingReader

# The ring buffer header's flag bits (include/uapi/linux/bpf.h).
BPF_RINGBUF_BUSY_BIT = 1 << 31
BPF_RINGBUF_DISCARD_BIT = 1 << 30


@pytest.mark.root  # tracefs is readable by root only
def test_plan_prefers_tracepoints_where_the_kernel_has_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """auto picks the tracepoints for every probe on this kernel: raw ones
    for the TCP internals where the kernel has BTF (probes/rawtp.py)."""
    monkeypatch.delenv("TCPLAB_ATTACH", raising=False)
    plan = make_plan()
    internals = "raw_tracepoint" if Path("/sys/kernel/btf/vmlinux").exists() else "tracepoint"
    assert {n: p.mode for n, p in plan.probes.items()} == {
        n: internals if n in INTERNALS else "tracepoint" for n in PROBES
    }
    assert [h.target for h in plan.probes["tcp_state"].hooks] == ["sock:inet_sock_set_state"]
    # epoll_wait, epoll_pwait and (from 5.11) epoll_pwait2, at enter and exit.
    assert len(plan.probes["epoll"].hooks) == (6 if KERNEL >= (5, 11) else 4)


def test_forced_attach_mode_is_honoured_or_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    """TCPLAB_ATTACH=kprobe gives kprobe hooks where kprobes exist, else says why not;
    the TCP internals have no kprobe variant and stay on their (raw) tracepoints, saying so."""
    monkeypatch.setenv("TCPLAB_ATTACH", "kprobe")
    plan = make_plan()
    for p in plan.probes.values():
        if p.name in ("fdio", "proc"):  # no kprobe variant either
            assert p.mode == "tracepoint" and p.why.endswith(" (no kprobe variant)")
        elif p.name in INTERNALS:
            assert p.mode in ("raw_tracepoint", "tracepoint", None)
            assert "no kprobe variant" in p.why or p.mode is None
            assert {h.kind for h in p.hooks} <= {p.mode}
        elif p.mode is None:
            assert "kprobe" in p.why
            assert p.hooks == []
        else:
            assert p.mode == "kprobe"
            kinds = {h.kind for h in p.hooks if h.kind != "tracepoint"}
            assert kinds == {"kprobe"} if p.name == "tcp_state" else {"kprobe", "kretprobe"}
            # connect names its socket from the state tracepoint in both modes.
            tps = [h.target for h in p.hooks if h.kind == "tracepoint"]
            assert tps == (["sock:inet_sock_set_state"] if p.name == "connect" else [])


def test_bad_settings_are_one_line_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TCPLAB_ATTACH", "fentry")
    with pytest.raises(ProbeError, match="TCPLAB_ATTACH='fentry': use auto, tracepoint or kprobe"):
        make_plan()
    monkeypatch.setenv("TCPLAB_ATTACH", "auto")
    monkeypatch.setenv("TCPLAB_DELIVERY", "pipe")
    with pytest.raises(ProbeError, match="use auto, ringbuf or perf"):
        make_plan()
    with pytest.raises(ProbeError, match="port 70000 is out of range"):
        Filters(ports={70000})
    with pytest.raises(ProbeError, match="pid -1 is out of range"):
        Filters(pids={-1})


# The kprobe variant's functions, as each .bpf.c defines them under TCPLAB_KPROBE.
KPROBE_FUNCTIONS = {
    "tcp_state": ["kp_tcp_set_state"],
    "accept": ["kp_enter_accept4", "kp_exit_accept", "kp_enter_accept"],
    "epoll": [
        "kp_enter_epoll_wait",
        "kp_exit_epoll",
        "kp_enter_epoll_pwait",
        "kp_enter_epoll_pwait2",
    ],
    "connect": ["kp_enter_connect", "kp_exit_connect"],
}


@pytest.mark.root
@pytest.mark.bpf
@pytest.mark.parametrize("probe", list(KPROBE_FUNCTIONS))
def test_kprobe_variants_compile_and_pass_the_verifier(probe: str) -> None:
    """Every kprobe/kretprobe function loads (the verifier accepts it) without
    attaching, and they are the functions the kprobe plan attaches."""
    from bcc import BPF

    if probe == "tcp_state":
        planned = ["kp_tcp_set_state"]
    else:
        planned = list(dict.fromkeys(fn for _, *fns in KPROBE_SYSCALLS[probe] for fn in fns))
    assert planned == KPROBE_FUNCTIONS[probe]
    b = BPF(text=program_text(probe).encode(), cflags=cflags(probe, "kprobe", "ringbuf"))
    try:
        for fn in KPROBE_FUNCTIONS[probe]:
            assert b.load_func(fn.encode(), BPF.KPROBE).fd >= 0
    finally:
        b.cleanup()


@pytest.mark.root
@pytest.mark.bpf
@pytest.mark.parametrize("delivery", ["perf", "bcc-ringbuf"])
def test_fallback_readers_deliver_events(monkeypatch: pytest.MonkeyPatch, delivery: str) -> None:
    """The perf buffer (kernels < 5.8) and bcc's ring reader (CPUs other than
    x86-64), run for real: a connection's transitions all arrive."""
    if delivery == "perf":
        monkeypatch.setenv("TCPLAB_DELIVERY", "perf")
    else:
        monkeypatch.setenv("TCPLAB_DELIVERY", "ringbuf")
        monkeypatch.setattr(loader, "MMAP_READER", False)
    plan = make_plan()
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    got: list[dict[str, object]] = []
    probes = ProbeSet(plan, ["tcp_state"], Filters(ports={port}))

    def add(probe: str, records: bytes) -> None:
        got.extend(batch_events(make_body(probe, probes.layout(probe), records)))

    try:
        probes.start(add)
        srv.listen()
        cli = socket.create_connection(("127.0.0.1", port))
        conn, _ = srv.accept()
        cli.close()
        conn.close()
        srv.close()
        deadline = time.monotonic() + 10 * SLOW
        while sum(e["new"] == "CLOSE" for e in got) < 3 and time.monotonic() < deadline:
            probes.poll(0.05)
        stats = probes.stats()["programs"]["tcp_state"]
    finally:
        probes.close()
    assert sum(e["new"] == "CLOSE" for e in got) == 3
    assert (stats["events"], stats["drops"]) == (len(got), 0)
    assert "ring_used" not in stats  # only the mmap reader measures occupancy


class FakeRing:
    """A file laid out like a BPF ring buffer map's mmap (consumer page,
    producer page, data), written the way the kernel writes it, for
    RingReader to read. The data is not mapped twice, so records must not wrap."""

    def __init__(self, capacity: int = 4096) -> None:
        self.page = mmap.PAGESIZE
        self.fd = os.memfd_create("fake-ring")
        os.ftruncate(self.fd, 2 * self.page + 2 * capacity)
        self.map = mmap.mmap(self.fd, 2 * self.page + 2 * capacity)
        self.capacity = capacity
        self.prod = 0

    def add(self, value: int, length: int = 8, flags: int = 0) -> int:
        """Append a record holding `value` (as a u64) with the given header length."""
        at = self.prod
        offset = 2 * self.page + at
        struct.pack_into("=II", self.map, offset, length | flags, 0)
        self.map[offset + 8 : offset + 8 + length] = struct.pack("=Q", value).ljust(length, b"\0")
        self.prod += (length + 8 + 7) & ~7
        struct.pack_into("=Q", self.map, self.page, self.prod)
        return at

    def commit(self, at: int) -> None:
        struct.pack_into("=I", self.map, 2 * self.page + at, 8)

    def consumed(self) -> int:
        return int(struct.unpack_from("=Q", self.map, 0)[0])

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


@pytest.fixture
def fake_ring() -> Iterator[FakeRing]:
    ring = FakeRing()
    yield ring
    ring.close()


def u64s(*values: int) -> bytes:
    return b"".join(struct.pack("=Q", v) for v in values)


def test_ring_reader_copies_runs_and_steps_over_what_is_not_a_record_of_ours(
    fake_ring: FakeRing, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Committed records come out in order as bytes, headers left out; a
    discarded record is skipped silently, one of another size is skipped and
    counted; a busy one stops the read until it is committed; reads stop at
    the cap."""
    monkeypatch.setattr(ring, "READ_MAX_BYTES", 4 * 16)
    reader = RingReader(fake_ring.fd, fake_ring.capacity, 8)
    for v in range(3):
        fake_ring.add(v)
    fake_ring.add(99, flags=BPF_RINGBUF_DISCARD_BIT)
    fake_ring.add(98, length=20)
    fake_ring.add(3)
    busy = fake_ring.add(4, flags=BPF_RINGBUF_BUSY_BIT)
    fake_ring.add(5)
    try:
        assert reader.read() == u64s(0, 1, 2)  # the cap: 4 records' bytes
        assert reader.read() == u64s(3)  # then stops at the busy record
        assert fake_ring.consumed() == busy
        assert reader.read() == b""
        fake_ring.commit(busy)
        assert reader.read() == u64s(4, 5)
        assert fake_ring.consumed() == fake_ring.prod
        assert reader.skipped == 1
    finally:
        reader.close()


def test_ring_reader_takes_a_long_run_in_one_read(fake_ring: FakeRing) -> None:
    """200 committed records (the ring's whole first half) come out in one read."""
    reader = RingReader(fake_ring.fd, fake_ring.capacity, 8)
    for v in range(200):
        fake_ring.add(v * 7)
    try:
        assert reader.read() == u64s(*(v * 7 for v in range(200)))
        assert (fake_ring.consumed(), reader.peak, reader.used()) == (200 * 16, 200 * 16, 0)
    finally:
        reader.close()
