"""The TCP internals probes on real sockets: tcp_probe sampled in the kernel,
retransmits, congestion state, resets and socket errors.

Each test drives real loopback connections on ports it picked and looks
only at events of those ports (other helpers' runs share this kernel). The
older kernels' layouts (no tcp_probe family or skaddr, tcp_send_reset with
sport/dport) are run for real by compiling the fallback variants against
this kernel's tracepoints: the format file is read as the older kernel's
would be, minus the fields it lacks (the real 5.10 run is `make
test-kernels`).
"""

from __future__ import annotations

import errno
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bus.internals import SAMPLE_WHY, SOCK_EVENTS
from bus.rawbatch import decode_batch, make_body
from bus.rawconvert import batch_events
from probes import tpformat
from probes.loader import Filters, ProbeSet
from probes.plan import make_plan, tracefs
from probes.program import SAMPLE_MS
from probes.sockdiag import TCP_INFO, parse_tcp_info

SLOW = float(os.environ.get("TCPLAB_TEST_SLOW", "1"))
Event = dict[str, Any]
# sock:inet_sk_error_report is from 5.13: on 5.10 (`make test-kernels`) the
# errno handed to the application has no kernel event, and none is expected.
ERROR_REPORT = tpformat.fields(tracefs(), "sock:inet_sk_error_report") is not None

pytestmark = [pytest.mark.root, pytest.mark.bpf]


class Traced:
    """The internals probes attached (compiled once per module), filtered to
    one listener's port per test."""

    def __init__(self) -> None:
        self.port = 0
        self.events: list[Event] = []
        self.probes = ProbeSet(make_plan(), ["tcp_probe", "tcp_events"], Filters(ports={1}))
        self.probes.start(self._add)

    def follow(self, port: int) -> None:
        self.probes.drain_all()
        self.probes.set_filters(Filters(ports={port}))
        self.port = port
        self.events.clear()

    def _add(self, probe: str, records: bytes) -> None:
        self.events.extend(batch_events(make_body(probe, self.probes.layout(probe), records)))

    def wait(self, done: Callable[[list[Event]], bool], what: str) -> list[Event]:
        deadline = time.monotonic() + 10 * SLOW
        while not done(self.events):
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {10 * SLOW:g}s; got {self.events[-5:]}")
            self.probes.poll(0.05)
        return self.events

    def of(self, kind: str, **match: Any) -> list[Event]:
        return [
            e
            for e in self.events
            if e["type"] == kind and all(e.get(k) == v for k, v in match.items())
        ]


@pytest.fixture(scope="module")
def attached() -> Iterator[Traced]:
    t = Traced()
    yield t
    t.probes.close()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    yield srv
    srv.close()


@pytest.fixture
def traced(attached: Traced, listener: socket.socket) -> Traced:
    attached.follow(listener.getsockname()[1])
    return attached


def pair(listener: socket.socket, rcvbuf: int | None = None) -> tuple[socket.socket, socket.socket]:
    cli = socket.socket()
    if rcvbuf is not None:
        # A small buffer and a small MSS: the receiver announces its window
        # again as soon as its reader frees a segment's worth (on loopback's
        # 64 KB MSS it would wait for the sender's backed-off probes).
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        for s in (listener, cli):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1000)
    cli.connect(listener.getsockname())
    conn, _ = listener.accept()
    return cli, conn


def test_bulk_transfer_is_sampled_in_the_kernel(listener: socket.socket, traced: Traced) -> None:
    """Hits are counted, events are fewer; a socket's events without a
    change are at least SAMPLE_MS apart; the fields are the socket's."""
    cli, conn = pair(listener)
    cport = cli.getsockname()[1]
    total = 32 << 20
    sender_thread = threading.Thread(target=cli.sendall, args=(b"x" * total,))
    sender_thread.start()
    try:
        got = 0
        while got < total:
            data = conn.recv(1 << 20)
            assert data, "the connection ended early"
            got += len(data)
        sender_thread.join()
    finally:
        cli.close()
        conn.close()
    traced.wait(
        lambda ev: any(e["type"] == "tcp_probe" and e["dport"] == cport for e in ev),
        "tcp_probe events of the receiver",
    )
    traced.probes.drain_all()
    sender = traced.of("tcp_probe", sport=cport)
    receiver = traced.of("tcp_probe", dport=cport)
    assert sender and receiver
    assert sender[0]["why"] == "first"
    assert {e["saddr"] for e in sender} == {"127.0.0.1"}
    assert {e["dport"] for e in sender} == {traced.port}
    hits = traced.probes.stats()["programs"]["tcp_probe"]["hits"]
    events = traced.probes.stats()["programs"]["tcp_probe"]["events"]
    # Every hit of our two sockets is reported in some event's `hits`.
    ours = sum(e["hits"] for e in sender + receiver)
    assert ours <= hits
    assert events < ours, "sampling let every hit through"
    for a, b in zip(sender, sender[1:], strict=False):
        if b["why"] == "period":
            assert b["ts"] - a["ts"] >= SAMPLE_MS * 1_000_000
        if b["why"] == "cwnd":
            assert (a["snd_cwnd"], a["ssthresh"]) != (b["snd_cwnd"], b["ssthresh"])
    # The sender's in-flight bytes and srtt are its own: data was in flight.
    assert max(e["in_flight"] for e in sender) > 0
    assert all(e["srtt_us"] > 0 for e in sender)


def test_zero_window_is_reported_both_ways(listener: socket.socket, traced: Traced) -> None:
    """A reader that stops: the sender's snd_wnd reaches 0 (an event when it
    does), and when the reader drains, an event when it reopens. (A cwnd
    change at the same hit is reported as the reason: it is checked first.)"""
    cli, conn = pair(listener, rcvbuf=16384)
    cport = cli.getsockname()[1]
    cli.setblocking(False)
    try:
        sent = 0
        deadline = time.monotonic() + 10 * SLOW
        while time.monotonic() < deadline:
            try:
                sent += cli.send(b"y" * 65536)
            except BlockingIOError:
                if any(e["snd_wnd"] == 0 for e in traced.of("tcp_probe", sport=cport)):
                    break
                traced.probes.poll(0.02)
        closed = traced.wait(
            lambda ev: any(
                e["type"] == "tcp_probe" and e["sport"] == cport and e["snd_wnd"] == 0 for e in ev
            ),
            "zero window on the sender",
        )
        assert closed

        def reopened(ev: list[Event]) -> bool:
            snd = [e["snd_wnd"] for e in ev if e["type"] == "tcp_probe" and e["sport"] == cport]
            return 0 in snd and any(w > 0 for w in snd[snd.index(0) :])

        conn.setblocking(False)
        while not reopened(traced.events):
            try:
                if not conn.recv(1 << 20):
                    break
            except BlockingIOError:
                traced.probes.poll(0.01)
        traced.wait(reopened, "the window reopening")
    finally:
        cli.close()
        conn.close()
    sender = traced.of("tcp_probe", sport=cport)
    # Both crossings are events of their own (whatever else changed there):
    # the event before the first zero had an open window, and so on.
    first_zero = next(i for i, e in enumerate(sender) if e["snd_wnd"] == 0)
    assert first_zero > 0 and sender[first_zero - 1]["snd_wnd"] > 0
    assert sender[first_zero]["why"] in ("zero_window", "cwnd")
    reopen = next(e for e in sender[first_zero:] if e["snd_wnd"] > 0)
    assert reopen["why"] in ("zero_window", "cwnd")


def test_reset_and_error_report(listener: socket.socket, traced: Traced) -> None:
    """An abortive close (SO_LINGER 0): a reset sent by that socket, received
    by its peer, whose application gets ECONNRESET from the kernel."""
    cli, conn = pair(listener)
    cport = cli.getsockname()[1]
    cli.sendall(b"hello")
    conn.recv(5)
    cli.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    cli.close()
    with pytest.raises(ConnectionResetError):
        conn.recv(10)
    conn.close()
    kinds = {"send_reset", "receive_reset"} | ({"sk_error"} if ERROR_REPORT else set())
    traced.wait(
        lambda ev: kinds <= {e["what"] for e in ev if e["type"] == "tcp_events"},
        " and ".join(sorted(kinds)),
    )
    sent = traced.of("tcp_events", what="send_reset", sport=cport)
    received = traced.of("tcp_events", what="receive_reset", dport=cport)
    errors = traced.of("tcp_events", what="sk_error", dport=cport)
    assert len(sent) == 1 and sent[0]["daddr"] == "127.0.0.1"
    assert sent[0]["dport"] == traced.port
    assert len(received) == 1 and received[0]["sport"] == traced.port
    assert [e["code"] for e in errors] == ([errno.ECONNRESET] if ERROR_REPORT else [])
    assert received[0]["skaddr"] != 0


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


# The record fields each variant must fill alike from the same hit; left
# out: ts, the on-CPU pid, tcp_probe's `hits` (counted since the socket's
# last event, which a period event resets when its program happens to run),
# and tcp_probe's skaddr, which the classic format has from 6.12 only.
SAMPLE_FIELDS = (
    "family",
    "sport",
    "dport",
    "saddr",
    "daddr",
    "snd_cwnd",
    "ssthresh",
    "snd_wnd",
    "rcv_wnd",
    "srtt_us",
    "snd_nxt",
    "snd_una",
    "data_len",
    "why",
)
EVENT_FIELDS = (
    "what",
    "skaddr",
    "family",
    "sport",
    "dport",
    "saddr",
    "daddr",
    "state",
    "code",
    "segs",
)


def test_raw_and_classic_variants_agree_on_a_lossy_transfer() -> None:
    """The raw tracepoint programs (the default where the kernel has BTF)
    and the classic ones, attached at once to the same real transfer across
    a lab link that drops 3% of the data segments (lab/drop.bpf.c): the
    same connections, the same retransmits (segments, results, states), the
    same congestion changes, the same cwnd samples, record field by record
    field; the raw ones are never skipped (recursion misses 0), and their
    retransmits never exceed the kernel's own Tcp RetransSegs of the
    sender's namespace."""
    from lab_helpers import in_ns

    from lab.hosts import Hosts, HostSpec
    from lab.link import Link, LinkSpec
    from lab.netstat import read as read_counters
    from lab.shaping import Shape

    # auto, not the environment's TCPLAB_ATTACH: the VM's tracepoint pass
    # (scripts/kernels/guest.sh) runs this file, and compares both there too.
    raw_plan, classic_plan = make_plan("auto"), make_plan("tracepoint")
    if raw_plan.probes["tcp_events"].mode != "raw_tracepoint":
        pytest.fail(f"no raw variant on this kernel: {raw_plan.probes['tcp_events'].why}")
    hosts = Hosts("rawtp", [HostSpec("a"), HostSpec("b")]).create()
    chunks: dict[tuple[str, str], list[bytes]] = {}
    sets: dict[str, ProbeSet] = {}
    try:
        Link(LinkSpec(hosts=("a", "b"), egress={"a": Shape(loss_pct=3)}), hosts.names()).create()
        srv = in_ns(hosts["b"].name, lambda: socket.create_server(("198.18.0.2", 0)))
        port = srv.getsockname()[1]
        for name, plan in (("raw", raw_plan), ("classic", classic_plan)):
            sets[name] = ProbeSet(plan, ["tcp_probe", "tcp_events"], Filters(ports={port}))
            sets[name].start(
                lambda probe, r, name=name: chunks.setdefault((name, probe), []).append(r)
            )
        before = read_counters(hosts["a"].name)
        cli = in_ns(hosts["a"].name, lambda: socket.create_connection(("198.18.0.2", port)))
        conn, _ = srv.accept()
        total = 8 << 20
        sender = threading.Thread(target=cli.sendall, args=(b"r" * total,))
        sender.start()
        got = 0
        while got < total:
            data = conn.recv(1 << 20)
            assert data, "the connection ended early"
            got += len(data)
        sender.join()
        after = read_counters(hosts["a"].name)
        info = parse_tcp_info(cli.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO.size))
        for s in (cli, conn, srv):
            s.close()
        for p in sets.values():
            p.drain_all()
        stats = {n: p.stats()["programs"] for n, p in sets.items()}
        records = {
            key: decode_batch(make_body(key[1], sets[key[0]].layout(key[1]), b"".join(parts)))
            for key, parts in chunks.items()
        }
    finally:
        for p in sets.values():
            p.close()
        hosts.destroy()
    misses = {n: sum(s[probe]["misses"] for probe in s) for n, s in stats.items()}
    assert misses["raw"] == 0, stats["raw"]
    assert all(s[probe]["drops"] == 0 for s in stats.values() for probe in s), stats

    def rows(name: str, probe: str, fields: tuple[str, ...]) -> list[tuple[Any, ...]]:
        recs = records.get((name, probe))
        if recs is None:
            return []
        if probe == "tcp_probe":  # first hits and cwnd changes: see SAMPLE_FIELDS
            recs = recs[recs["why"] <= SAMPLE_WHY.index("cwnd")]
        cells = ([np.asarray(r[f]).tolist() for f in fields] for r in recs)
        return [tuple(tuple(c) if isinstance(c, list) else c for c in row) for row in cells]

    events = {n: sorted(rows(n, "tcp_events", EVENT_FIELDS)) for n in ("raw", "classic")}
    samples = {n: rows(n, "tcp_probe", SAMPLE_FIELDS) for n in ("raw", "classic")}
    retrans = records[("raw", "tcp_events")]
    retrans = retrans[retrans["what"] == SOCK_EVENTS.index("retransmit")]
    assert len(retrans), "3% loss brought no retransmit"
    # Tcp RetransSegs adds tcp_skb_pcount(skb) per retransmitted skb before
    # the transmit; one that fails after (refused: code != 0, where the kernel passes err) is
    # counted in TCPRetransFail as well (tests/test_internals_runs.py).
    sent = int(retrans["segs"][retrans["code"] == 0].sum())
    failed = after["TcpExt.TCPRetransFail"] - before["TcpExt.TCPRetransFail"]
    codes = Counter(zip(retrans["code"].tolist(), retrans["segs"].tolist(), strict=True))
    classic = records[("classic", "tcp_events")]
    classic = classic[classic["what"] == SOCK_EVENTS.index("retransmit")]
    kernel = after["Tcp.RetransSegs"] - before["Tcp.RetransSegs"]
    # Equal in 22 of 25 runs here; in 3 the kernel counted 1 to 10 segments
    # more than EITHER variant saw (no miss, no drop, both alike, the
    # socket's own tcpi_total_retrans agreeing with the kernel): not a loss
    # of the raw programs, and a cause not found yet (docs/probes.md).
    assert sent + failed <= kernel, (
        codes,
        len(classic),
        int(classic["segs"][classic["code"] == 0].sum()),
        {k: after[k] - before[k] for k in after},
        info.as_dict()["total_retrans"],
        stats,
    )
    n_events, n_samples = len(events["raw"]), len(samples["raw"])
    print(
        f"retransmits {len(retrans)} ({sent} segments, {failed} failed), {n_events} events, "
        f"{n_samples} cwnd samples; recursion misses {misses}"
    )
    assert len(samples["raw"]) >= 4
    # Hits the kernel skipped in a classic program (another BPF program was
    # running on that CPU; counted machine-wide, other sockets too) are
    # events only the raw one has: each tcp_events hit is one event of its
    # own, so the classic ones are then among the raw ones; a skipped
    # tcp_probe hit can move the next cwnd sample, so those are compared
    # only when nothing was skipped.
    classic_missed = {probe: stats["classic"][probe]["misses"] for probe in stats["classic"]}
    if classic_missed["tcp_events"]:
        extra = Counter(events["raw"]) - Counter(events["classic"])
        assert not Counter(events["classic"]) - Counter(events["raw"])
        assert extra.total() <= classic_missed["tcp_events"], (extra, classic_missed)
    else:
        assert events["raw"] == events["classic"]
    if not classic_missed["tcp_probe"]:
        assert samples["raw"] == samples["classic"]


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


TCPLAB = str(Path(sys.executable).with_name("tcplab"))
T = r"\s*\d+\.\d{6}"
CWND_LINE = re.compile(
    rf"{T} cwnd   127\.0\.0\.1:(?P<sport>\d+) -> 127\.0\.0\.1:(?P<dport>\d+)  cwnd=\d+ "
    r"ssthresh=\d+ snd_wnd=\d+ rcv_wnd=\d+ srtt=\d+us in_flight=\d+ "
    r"\((first|cwnd|zero_window|period), \d+ hits\)"
)
EVENT_LINE = re.compile(
    rf"{T} (?P<what>\w+)\s+127\.0\.0\.1:(?P<sport>\d+) -> 127\.0\.0\.1:(?P<dport>\d+)"
    r"(  (?P<detail>.*))?"
)


def test_watch_internals_text_format(listener: socket.socket) -> None:
    """`tcplab watch --internals -P PORT`: cwnd lines for the connection's
    sockets, then the reset sent, received and the error the kernel reported,
    one line each in the documented format; Ctrl-C ends it with no drop."""
    port = listener.getsockname()[1]
    proc = subprocess.Popen(
        [TCPLAB, "watch", "--internals", "--probe", "tcp_probe", "--probe", "tcp_events",
         "-P", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    lines: list[str] = []
    try:
        assert proc.stderr is not None and proc.stdout is not None
        first = proc.stderr.readline().decode()
        assert first.startswith("attached: ") and re.search(r"tcp_probe: (raw_)?tracepoint", first)
        cli, conn = pair(listener)
        cport = cli.getsockname()[1]
        cli.sendall(b"w" * 100_000)
        n = 0
        while n < 100_000:
            n += len(conn.recv(1 << 20))
        cli.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        cli.close()
        with pytest.raises(ConnectionResetError):
            conn.recv(10)
        conn.close()
        fd, buf = proc.stdout.fileno(), b""
        deadline = time.monotonic() + 10 * SLOW
        last = " sk_error " if ERROR_REPORT else " receive_reset "
        while not any(last in x for x in lines) or not any(" send_reset " in x for x in lines):
            assert time.monotonic() < deadline and proc.poll() is None, f"got {lines}"
            if select.select([fd], [], [], 0.1)[0]:
                buf += os.read(fd, 65536)
                *done, buf = buf.split(b"\n")
                lines += [x.decode() for x in done]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30 * SLOW)
    assert proc.returncode == 0
    assert err.decode().strip().splitlines()[-1].startswith("drops: 0 (")
    ours = [x for x in lines if f":{cport} " in x + " "]
    cwnd = [m for m in map(CWND_LINE.fullmatch, ours) if m]
    events = [m for m in map(EVENT_LINE.fullmatch, ours) if m and m["what"] != "cwnd"]
    assert len(cwnd) + len(events) == len(ours), ours
    assert {(int(m["sport"]), int(m["dport"])) for m in cwnd} == {(cport, port), (port, cport)}
    got = sorted((m["what"], int(m["sport"]), m["detail"]) for m in events
                 if m["what"] != "cong_state")  # fmt: skip
    # On loopback the peer may take the reset in before the sender's
    # tracepoint fires: the order is not checked, the lines are.
    assert [(w, sp) for w, sp, _ in got] == [
        ("receive_reset", port), ("send_reset", cport), ("sk_error", port)
    ][: 3 if ERROR_REPORT else 2]  # fmt: skip
    assert got[0][2] is None and (not ERROR_REPORT or got[2][2] == "ECONNRESET")
    assert re.fullmatch(r"in [A-Z_0-9]+( reason \d+)?", got[1][2] or ""), got[1]
