"""The two variants of the TCP internals programs, raw tracepoints and
classic ones, against each other and against older kernels' layouts.

The older kernels' layouts (no tcp_probe family or skaddr, tcp_send_reset
with sport/dport) are run for real by compiling the fallback variants
against this kernel's tracepoints: the format file is read as the older
kernel's would be, minus the fields it lacks (the real 5.10 run is `make
test-kernels`). Each test attaches its own probes, filtered to the ports it
picked (other helpers' runs share this kernel).
"""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from lab_helpers import SLOW
from probe_internals_harness import Event

from bus.rawbatch import make_body
from bus.rawconvert import batch_events
from probes import tpformat
from probes.loader import Filters, ProbeSet
from probes.plan import make_plan, tracefs

pytestmark = [pytest.mark.root, pytest.mark.bpf]


# What 5.10's format files lack of what the programs read (probes/tpformat.py).
OLD_KERNEL_LACKS = {
    "tcp:tcp_probe": ("family", "skaddr"),
    "tcp:tcp_receive_reset": ("family",),
    "tcp:tcp_retransmit_skb": ("family",),
}


@pytest.mark.parametrize("attach", ["tracepoint", "auto"])
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_fallback_layouts_of_older_kernels(
    monkeypatch: pytest.MonkeyPatch, family: int, attach: str
) -> None:
    """Compiled as for a kernel whose formats lack tcp_probe's family and
    skaddr (5.10) and the resets' family: the classic tracepoints take the
    family from the sockaddr image or the v4-mapped address and know the
    socket by its 4-tuple. The raw tracepoints (`auto` where the kernel has
    BTF) read no format file: the same events from the socket itself, with
    its address, for IPv4 and IPv6 sockets alike."""
    real = tpformat.fields

    def older(root: Any, tp: str) -> dict[str, str] | None:
        have = real(root, tp)
        if have is None:
            return None
        return {k: v for k, v in have.items() if k not in OLD_KERNEL_LACKS.get(tp, ())}

    monkeypatch.setattr(tpformat, "fields", older)
    # The classic tracepoints read these formats; the raw ones (the default
    # where the kernel has BTF) read no format at all.
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    srv = socket.socket(family)
    srv.bind((host, 0))
    srv.listen()
    port = srv.getsockname()[1]
    got: list[Event] = []
    plan = make_plan(attach)
    raw = plan.probes["tcp_probe"].mode == "raw_tracepoint"
    if attach == "auto" and not raw and Path("/sys/kernel/btf/vmlinux").exists():
        pytest.fail(f"the raw variant does not run here: {plan.probes['tcp_probe'].why}")
    probes = ProbeSet(plan, ["tcp_probe", "tcp_events"], Filters(ports={port}))
    try:
        probes.start(lambda p, r: got.extend(batch_events(make_body(p, probes.layout(p), r))))
        cli = socket.socket(family)
        cli.connect((host, port))
        conn, _ = srv.accept()
        cli.sendall(b"z" * 100_000)
        n = 0
        while n < 100_000:
            n += len(conn.recv(1 << 20))
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
        with pytest.raises(ConnectionResetError):
            cli.recv(10)
        cli.close()
        deadline = time.monotonic() + 10 * SLOW
        while not any(e.get("what") == "receive_reset" for e in got):
            assert time.monotonic() < deadline, f"no receive_reset; got {got[-5:]}"
            probes.poll(0.05)
    finally:
        probes.close()
        srv.close()
    samples = [e for e in got if e["type"] == "tcp_probe"]
    assert samples
    if raw:
        assert 0 not in {e["skaddr"] for e in samples}
    else:
        assert {e["skaddr"] for e in samples} == {0}
    assert {e["family"] for e in samples} == {family}
    assert {e["saddr"] for e in samples} == {host}
    assert {port} <= {e["sport"] for e in samples} | {e["dport"] for e in samples}
    received = [e for e in got if e.get("what") == "receive_reset"]
    assert [(e["family"], e["saddr"], e["dport"]) for e in received] == [(family, host, port)]


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_reset_without_a_socket_alike_in_both_variants(family: int) -> None:
    """A SYN to a port nobody listens on is answered with a RST that has no
    socket: from 6.10 tcp_send_reset fires for it (sk NULL) and both
    variants take the 4-tuple from the segment, reversed into the would-be
    socket's view (the raw one parses the skb's IP and TCP headers itself);
    before 6.10 it does not fire, in either."""
    fires = "sport" not in (tpformat.fields(tracefs(), "tcp:tcp_send_reset") or {"sport": ""})
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    with socket.socket(family) as s:  # a port that is free, then closed
        s.bind((host, 0))
        port = s.getsockname()[1]
    got: dict[str, list[Event]] = {"auto": [], "tracepoint": []}
    sets = []
    try:
        for attach, out in got.items():
            p = ProbeSet(make_plan(attach), ["tcp_events"], Filters(ports={port}))
            sets.append(p)
            p.start(lambda probe, r, p=p, out=out: out.extend(
                batch_events(make_body(probe, p.layout(probe), r))))  # fmt: skip
        with socket.socket(family) as cli, pytest.raises(ConnectionRefusedError):
            cli.connect((host, port))
        deadline = time.monotonic() + (10 * SLOW if fires else 0.5)
        while time.monotonic() < deadline and not all(got.values()):
            for p in sets:
                p.poll(0.05)
        for p in sets:  # the rest: loopback's RST was handled inside connect()
            p.drain_all()
    finally:
        for p in sets:
            p.close()
    keys = ("what", "skaddr", "family", "saddr", "sport", "daddr", "dport", "state", "code")
    rows = {a: [tuple(e[k] for k in keys) for e in ev] for a, ev in got.items()}
    assert rows["auto"] == rows["tracepoint"]
    if fires:
        # The client's side follows: receive_reset and its sk_error.
        sent = [r[:5] for r in rows["auto"] if r[0] == "send_reset"]
        assert sent == [("send_reset", 0, family, host, port)], rows
