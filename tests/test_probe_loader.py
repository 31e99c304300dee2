"""Attach planning, settings and the variants that cannot attach here.

This kernel has no kprobes (CONFIG_KPROBES off), so the kprobe variants are
proven by compiling them and loading every function through the verifier
without attaching; the perf buffer fallback (for kernels < 5.8) is proven by
running it for real, since perf buffers work on this kernel too.
"""

from __future__ import annotations

import socket
import time

import pytest

from probes import loader
from probes.loader import (
    PROBES,
    Filters,
    ProbeError,
    ProbeSet,
    kprobe_functions,
    make_plan,
    verify_kprobe_variant,
)


@pytest.mark.root  # tracefs is readable by root only
def test_plan_prefers_tracepoints_where_the_kernel_has_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """auto picks the tracepoints for all three probes on this kernel."""
    monkeypatch.delenv("TCPLAB_ATTACH", raising=False)
    plan = make_plan()
    assert {n: p.mode for n, p in plan.probes.items()} == {n: "tracepoint" for n in PROBES}
    assert [h.target for h in plan.probes["tcp_state"].hooks] == ["sock:inet_sock_set_state"]
    assert len(plan.probes["epoll"].hooks) == 6


def test_forced_attach_mode_is_honoured_or_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    """TCPLAB_ATTACH=kprobe gives kprobe hooks where kprobes exist, else says why not."""
    monkeypatch.setenv("TCPLAB_ATTACH", "kprobe")
    plan = make_plan()
    for p in plan.probes.values():
        if p.mode is None:
            assert "kprobe" in p.why
            assert p.hooks == []
        else:
            assert p.mode == "kprobe"
            assert {h.kind for h in p.hooks} <= {"kprobe", "kretprobe"}


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


@pytest.mark.root
@pytest.mark.bpf
@pytest.mark.parametrize("probe", PROBES)
def test_kprobe_variants_compile_and_pass_the_verifier(probe: str) -> None:
    """Every kprobe/kretprobe function loads (verifier accepts it) without attaching."""
    assert verify_kprobe_variant(probe) == kprobe_functions(probe)


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
    try:
        probes.start(lambda _p, events: got.extend(events))
        srv.listen()
        cli = socket.create_connection(("127.0.0.1", port))
        conn, _ = srv.accept()
        cli.close()
        conn.close()
        srv.close()
        deadline = time.monotonic() + 10
        while sum(e["new"] == "CLOSE" for e in got) < 3 and time.monotonic() < deadline:
            probes.poll(0.05)
        stats = probes.stats()["programs"]["tcp_state"]
    finally:
        probes.close()
    assert sum(e["new"] == "CLOSE" for e in got) == 3
    assert (stats["events"], stats["drops"]) == (len(got), 0)
    assert "ring_used" not in stats  # only the mmap reader measures occupancy
