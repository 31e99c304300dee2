"""bus/rawbatch.py without bcc: raw records packed here by hand, the way the
C compiler lays out probes/events.h, decode to the expected columns and dicts.

The layouts below are written from the C structs (offsets by the C rules:
each field at a multiple of its size); the real programs' layouts come
from bcc's parsed struct and are checked against bcc's own decoding in
tests/test_probe_kernel_decoding.py.
"""

from __future__ import annotations

import hashlib
import json
import socket
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus.rawbatch import (
    FIELDS,
    RawBatchError,
    check_body,
    count,
    decode_batch,
    dtype_of,
    make_body,
    make_layout,
)
from bus.rawconvert import batch_events, state_balance

# struct tcp_state_event: u64 ts, u64 skaddr, u32 pid, u32 tid, char comm[16],
# u16 family, u16 sport, u16 dport, u8 oldstate, u8 newstate, u8 saddr[16], u8 daddr[16].
TCP_STATE = make_layout(
    ["ts", "skaddr", "pid", "tid", "comm", "family", "sport", "dport", "oldstate", "newstate",
     "saddr", "daddr"],
    ["<u8", "<u8", "<u4", "<u4", "|S16", "<u2", "<u2", "<u2", "|u1", "|u1", "(16,)|u1",
     "(16,)|u1"],
    [0, 8, 16, 20, 24, 40, 42, 44, 46, 47, 48, 64],
    80,
)  # fmt: skip
TCP_STATE_PACK = struct.Struct("<QQII16sHHHBB16s16s")

# struct accept_event: u64 ts, u64 dur_ns, u32 pid, u32 tid, char comm[16], s32 lfd,
# s32 fd, s32 err, u16 family, u16 peer_port, u8 peer_addr[16], u8 syscall, u8 pad[7].
ACCEPT = make_layout(
    ["ts", "dur_ns", "pid", "tid", "comm", "lfd", "fd", "err", "family", "peer_port",
     "peer_addr", "syscall", "pad"],
    ["<u8", "<u8", "<u4", "<u4", "|S16", "<i4", "<i4", "<i4", "<u2", "<u2", "(16,)|u1", "|u1",
     "(7,)|u1"],
    [0, 8, 16, 20, 24, 40, 44, 48, 52, 54, 56, 72, 73],
    80,
)  # fmt: skip
ACCEPT_PACK = struct.Struct("<QQII16siiiHH16sB7x")

# struct epoll_call_event: u64 ts, u64 dur_ns, u32 pid, u32 tid, char comm[16],
# s32 epfd, s32 maxevents, s32 timeout_ms, s32 ready, s32 err, u8 syscall, u8 pad[3].
EPOLL = make_layout(
    ["ts", "dur_ns", "pid", "tid", "comm", "epfd", "maxevents", "timeout_ms", "ready", "err",
     "syscall", "pad"],
    ["<u8", "<u8", "<u4", "<u4", "|S16", "<i4", "<i4", "<i4", "<i4", "<i4", "|u1", "(3,)|u1"],
    [0, 8, 16, 20, 24, 40, 44, 48, 52, 56, 60, 61],
    64,
)  # fmt: skip
EPOLL_PACK = struct.Struct("<QQII16siiiiiB3x")

V6_LOOP = socket.inet_pton(socket.AF_INET6, "::1")
V4_LOOP = socket.inet_aton("127.0.0.1").ljust(16, b"\0")
V4_OTHER = socket.inet_aton("198.18.0.2").ljust(16, b"\0")


def test_tcp_state_records_decode_to_columns_and_dicts() -> None:
    """Every field, IPv4 and IPv6, a command name with bytes after its NUL,
    and a state number this build does not know (a newer kernel's)."""
    raw = b"".join(
        [
            TCP_STATE_PACK.pack(10, 0xFFFF8881, 7, 8, b"python", 2, 0, 8080, 7, 2, V4_LOOP,
                                V4_LOOP),
            TCP_STATE_PACK.pack(11, 0xFFFF8882, 0, 0, b"swapper/1\0junk", 10, 5001, 22, 1, 4,
                                V6_LOOP, V6_LOOP),
            TCP_STATE_PACK.pack(12, 0xFFFF8881, 7, 9, b"python", 2, 40000, 8080, 2, 99,
                                V4_OTHER, V4_LOOP),
        ]
    )  # fmt: skip
    body = make_body("tcp_state", TCP_STATE, raw)
    records = decode_batch(body)
    assert count(body) == len(records) == 3
    assert records["ts"].tolist() == [10, 11, 12]
    assert records["newstate"].tolist() == [2, 4, 99]
    assert records["saddr"][2, :4].tolist() == [198, 18, 0, 2]
    assert batch_events(body) == [
        {"type": "tcp_state", "ts": 10, "skaddr": 0xFFFF8881, "cpu_pid": 7, "cpu_tid": 8,
         "cpu_comm": "python", "family": 2, "saddr": "127.0.0.1", "sport": 0,
         "daddr": "127.0.0.1", "dport": 8080, "old": "CLOSE", "new": "SYN_SENT"},
        {"type": "tcp_state", "ts": 11, "skaddr": 0xFFFF8882, "cpu_pid": 0, "cpu_tid": 0,
         "cpu_comm": "swapper/1", "family": 10, "saddr": "::1", "sport": 5001,
         "daddr": "::1", "dport": 22, "old": "ESTABLISHED", "new": "FIN_WAIT1"},
        {"type": "tcp_state", "ts": 12, "skaddr": 0xFFFF8881, "cpu_pid": 7, "cpu_tid": 9,
         "cpu_comm": "python", "family": 2, "saddr": "198.18.0.2", "sport": 40000,
         "daddr": "127.0.0.1", "dport": 8080, "old": "SYN_SENT", "new": "99"},
    ]  # fmt: skip


def test_accept_and_epoll_records_decode_to_dicts() -> None:
    accept = make_body(
        "accept",
        ACCEPT,
        ACCEPT_PACK.pack(5, 1000, 42, 43, b"server", 3, 7, 0, 10, 5555, V6_LOOP, 1)
        + ACCEPT_PACK.pack(6, 20, 42, 43, b"server", 3, -1, 11, 0, 0, bytes(16), 0),
    )
    assert batch_events(accept) == [
        {"type": "accept", "ts": 5, "pid": 42, "tid": 43, "comm": "server",
         "syscall": "accept4", "lfd": 3, "fd": 7, "errno": 0, "family": 10,
         "peer_addr": "::1", "peer_port": 5555, "dur_ns": 1000},
        {"type": "accept", "ts": 6, "pid": 42, "tid": 43, "comm": "server",
         "syscall": "accept", "lfd": 3, "fd": -1, "errno": 11, "family": 0,
         "peer_addr": "", "peer_port": 0, "dur_ns": 20},
    ]  # fmt: skip
    epoll = make_body(
        "epoll", EPOLL, EPOLL_PACK.pack(9, 200_000_000, 50, 51, b"mux", 4, 16, -1, 3, 0, 2)
    )
    assert batch_events(epoll) == [
        {"type": "epoll", "ts": 9, "pid": 50, "tid": 51, "comm": "mux",
         "syscall": "epoll_pwait2", "epfd": 4, "maxevents": 16, "timeout_ms": -1,
         "ready": 3, "errno": 0, "dur_ns": 200_000_000},
    ]  # fmt: skip


def test_an_empty_batch_decodes_to_nothing() -> None:
    body = make_body("tcp_state", TCP_STATE, b"")
    assert len(decode_batch(body)) == 0
    assert batch_events(body) == []


def test_state_balance_counts_sockets_per_state() -> None:
    """Entered minus left per state: one socket now ESTABLISHED, one in FIN_WAIT2."""
    steps = [(7, 2), (2, 1), (7, 2), (2, 1), (1, 4), (4, 5)]  # CLOSE->SYN_SENT->ESTABLISHED ...
    raw = b"".join(
        TCP_STATE_PACK.pack(i, 1, 0, 0, b"", 2, 0, 0, old, new, V4_LOOP, V4_LOOP)
        for i, (old, new) in enumerate(steps)
    )
    balance = state_balance(decode_batch(make_body("tcp_state", TCP_STATE, raw)))
    assert {n: int(v) for n, v in enumerate(balance) if v} == {7: -2, 1: 1, 5: 1}


def test_a_server_child_enters_syn_recv_without_taking_the_listener_away() -> None:
    """The child's first transition reads LISTEN -> SYN_RECV (cloned from the
    listener): the listener is still there."""
    steps = [(7, 10), (10, 3), (3, 1)]  # listen; the child: clone, then ESTABLISHED
    raw = b"".join(
        TCP_STATE_PACK.pack(i, 1, 0, 0, b"", 2, 0, 0, old, new, V4_LOOP, V4_LOOP)
        for i, (old, new) in enumerate(steps)
    )
    balance = state_balance(decode_batch(make_body("tcp_state", TCP_STATE, raw)))
    assert {n: int(v) for n, v in enumerate(balance) if v} == {7: -1, 10: 1, 1: 1}


def test_the_layout_id_is_the_memo_key_and_is_checked() -> None:
    """The same description gives the same id and dtype; a changed description
    under a known id is refused on first sight of that id."""
    again = make_layout(TCP_STATE["names"], TCP_STATE["formats"], TCP_STATE["offsets"], 80)
    assert again["id"] == TCP_STATE["id"]
    assert dtype_of(again) is dtype_of(TCP_STATE)
    forged: dict[str, Any] = dict(EPOLL, itemsize=72, id="0123456789abcdef")
    with pytest.raises(RawBatchError, match="not the hash of its description"):
        dtype_of(forged)
    assert dtype_of(EPOLL).itemsize == 64


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"records": b"\0" * 81}, "81 bytes are not whole records of 80"),
        ({"records": "text"}, "records is not bytes"),
        ({"layout": "x"}, "layout is not a map"),
        ({"probe": 3}, "probe is not a string"),
        ({"probe": "tcp_nosuch"}, "unknown probe 'tcp_nosuch'"),
        ({"layout": {**TCP_STATE, "formats": ["O"] * 12}}, "not a plain scalar"),
        ({"layout": {**TCP_STATE, "itemsize": 60}}, "not a valid record|beyond"),
        ({"layout": {**TCP_STATE, "names": ["ts"]}}, "lists of one length"),
        ({"layout": {**TCP_STATE, "itemsize": 10**9}}, "is not 1..4096"),
    ],
)
def test_bad_bodies_raise_one_error_type(change: dict[str, Any], reason: str) -> None:
    body = {**make_body("tcp_state", TCP_STATE, b"\0" * 80), **change}
    with pytest.raises(RawBatchError, match=reason):
        batch_events(body)


def test_a_layout_without_a_field_the_probe_needs_is_refused() -> None:
    thin = make_layout(["ts"], ["<u8"], [0], 8)
    with pytest.raises(RawBatchError, match="tcp_state records lack or mistype skaddr, pid"):
        batch_events(make_body("tcp_state", thin, b"\0" * 16))
    text_ts = make_layout(["ts"], ["|S8"], [0], 8)
    # Every field the description reads, in its order (bus/rawbatch.py COLUMNS).
    wrong = "ts, pid, tid, comm, syscall, epfd, maxevents, timeout_ms, ready, err, dur_ns"
    with pytest.raises(RawBatchError, match=f"epoll records lack or mistype {wrong}$"):
        batch_events(make_body("epoll", text_ts, b"\0" * 16))


def test_decoded_columns_are_numpy_views_of_the_batch() -> None:
    """No per-record copy: the array reads the body's bytes."""
    raw = TCP_STATE_PACK.pack(1, 2, 3, 4, b"x", 2, 5, 6, 7, 2, V4_LOOP, V4_LOOP)
    records = decode_batch(make_body("tcp_state", TCP_STATE, raw))
    assert isinstance(records, np.ndarray) and records.base is not None
    assert records.dtype.names is not None and records.dtype.names[:2] == ("ts", "skaddr")


def test_layout_of_a_ctypes_class_as_bcc_builds_it() -> None:
    """probes/layout.py reads the ctypes class bcc makes of events.h (the
    same type() call, its char and u8 arrays) into the layout stated above."""
    import ctypes as ct

    from probes.layout import layout_of

    fields = [
        ("ts", ct.c_ulonglong), ("skaddr", ct.c_ulonglong), ("pid", ct.c_uint),
        ("tid", ct.c_uint), ("comm", ct.c_char * 16), ("family", ct.c_ushort),
        ("sport", ct.c_ushort), ("dport", ct.c_ushort), ("oldstate", ct.c_ubyte),
        ("newstate", ct.c_ubyte), ("saddr", ct.c_ubyte * 16), ("daddr", ct.c_ubyte * 16),
    ]  # fmt: skip
    cls = type("", (ct.Structure,), {"_fields_": fields})
    assert layout_of(cls) == TCP_STATE


def test_the_live_tally_counts_raw_batches_and_sockets_per_state() -> None:
    """lab/run.py's Tally: events per probe and sockets per state from the raw
    batch (numpy), as the live view shows them."""
    from bus.rawconvert import state_counts
    from bus.schema import Envelope, Kind
    from lab.tally import Tally

    steps = [(7, 10), (10, 3), (3, 1), (7, 2), (2, 1), (1, 4), (4, 5), (5, 7)]
    raw = b"".join(
        TCP_STATE_PACK.pack(i, 1, 0, 0, b"", 2, 0, 0, old, new, V4_LOOP, V4_LOOP)
        for i, (old, new) in enumerate(steps)
    )
    tally = Tally()
    for seq in (1, 2):
        tally.add(
            Envelope(Kind.KERNEL_RAW, "probes", seq, 0, make_body("tcp_state", TCP_STATE, raw))
        )
    tally.add(Envelope(Kind.KERNEL_RAW, "probes", 3, 0, make_body("epoll", EPOLL, bytes(64 * 3))))
    assert tally.kernel_events == {"tcp_state": 16, "epoll": 3}
    # Twice: a listener (LISTEN) whose child is ESTABLISHED, and a client gone
    # through FIN_WAIT2 to CLOSE. CLOSE is where sockets come from: never shown.
    assert state_counts(tally.kernel_states) == {"ESTABLISHED": 2, "LISTEN": 2}


NAMES = sorted({n for fields in FIELDS.values() for n in fields} | {"pad", "x"})
FORMATS = ["<u8", "<i4", "<u2", "|u1", "|S16", "|S4", "(16,)|u1", "(4,)|u1", "|V8", ">u4"]


@st.composite
def raw_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """Bodies as a hostile or confused sender could make them: any probe name,
    any fields in any formats and places, a right or wrong id, any bytes."""
    probe = draw(st.sampled_from([*FIELDS, "tcp_probe"]))
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=14, unique=True))
    formats = [draw(st.sampled_from(FORMATS)) for _ in names]
    offsets = [draw(st.integers(0, 96)) for _ in names]
    itemsize = draw(st.integers(1, 128))
    layout: dict[str, Any] = {
        "names": names, "formats": formats, "offsets": offsets, "itemsize": itemsize,
    }  # fmt: skip
    good_id = hashlib.blake2b(
        json.dumps([names, formats, offsets, itemsize], separators=(",", ":")).encode(),
        digest_size=8,
    ).hexdigest()
    layout["id"] = draw(st.sampled_from([good_id, "0" * 16]))
    records = draw(st.binary(max_size=4 * itemsize + 3))
    return {"probe": probe, "layout": layout, "records": records}


REAL = {"tcp_state": TCP_STATE, "accept": ACCEPT, "epoll": EPOLL}


@st.composite
def garbage_records(draw: st.DrawFn) -> dict[str, Any]:
    """The probes' own layouts holding any bytes: states, syscalls and
    families out of range, command names that are not UTF-8."""
    probe = draw(st.sampled_from(sorted(REAL)))
    size = REAL[probe]["itemsize"]
    records = draw(st.binary(min_size=size, max_size=8 * size))
    return make_body(probe, REAL[probe], records[: len(records) // size * size])


@settings(max_examples=400, deadline=None)
@given(st.one_of(raw_bodies(), garbage_records()))
def test_a_body_the_bus_accepts_never_breaks_a_consumer(body: dict[str, Any]) -> None:
    """check_body() (the bus boundary) refuses with RawBatchError, or every
    consumer takes the body: the dicts, the live tally, the correlator's columns."""
    from bus.schema import Envelope, Kind
    from correlator.columns import Columns
    from lab.tally import Tally

    try:
        check_body(body)
    except RawBatchError:
        return
    n = len(body["records"]) // body["layout"]["itemsize"]
    if body["probe"] in FIELDS:
        assert len(batch_events(body)) == n
    tally = Tally()
    tally.add(Envelope(Kind.KERNEL_RAW, "probes", 1, 0, body))
    assert tally.kernel_events == {body["probe"]: n}
    batches = Columns({}).raw(body)
    assert sum(len(b.ts) for b in batches) == n


def test_the_bus_passes_a_raw_batch_through_and_rejects_a_bad_one_as_bad_body() -> None:
    """bus.schema.decode: a KERNEL_RAW frame comes out as the body it was, bytes
    and layout intact; one whose records are not whole is a bad_body."""
    from bus.schema import Envelope, FrameError, Kind, decode, encode

    raw = TCP_STATE_PACK.pack(1, 2, 3, 4, b"x", 2, 5, 6, 7, 2, V4_LOOP, V4_LOOP)
    body = make_body("tcp_state", TCP_STATE, raw)
    env = decode(encode(Envelope(Kind.KERNEL_RAW, "probes", 1, 5, body)))
    assert (env.kind, env.body) == (Kind.KERNEL_RAW, body)
    torn = make_body("tcp_state", TCP_STATE, raw[:-1])
    with pytest.raises(FrameError, match="79 bytes are not whole records of 80") as e:
        decode(encode(Envelope(Kind.KERNEL_RAW, "probes", 2, 5, torn)))
    assert e.value.reason == "bad_body"


def test_the_live_view_shows_the_kernel_row_beside_sock_diag() -> None:
    """The states summed from raw batches fill the view's "tracepoint" row, in
    the columns of their states; TIME_WAIT has none (the tracepoint never
    reports it)."""
    import io

    from rich.console import Console

    from bus.rawconvert import state_counts
    from bus.schema import Envelope, Kind
    from lab.live import STATE_ORDER, LiveView
    from lab.tally import Tally

    steps = [(7, 10), (10, 3), (3, 1), (7, 2), (2, 1)]  # a listener, its child, a client
    raw = b"".join(
        TCP_STATE_PACK.pack(i, 1, 0, 0, b"", 2, 0, 0, old, new, V4_LOOP, V4_LOOP)
        for i, (old, new) in enumerate(steps)
    )
    tally = Tally()
    tally.add(Envelope(Kind.KERNEL_RAW, "probes", 1, 0, make_body("tcp_state", TCP_STATE, raw)))
    view = LiveView("quiet", "echo", 10.0)
    view._status = {
        "phase": "run",
        "states": {"ESTABLISHED": 2, "TIME_WAIT": 5},
        "kernel_states": state_counts(tally.kernel_states),
    }
    out = io.StringIO()
    Console(file=out, width=200).print(view._render())
    rows = {
        cells[0]: dict(zip(STATE_ORDER, cells[1:], strict=True))
        for line in out.getvalue().splitlines()
        if len(cells := [c.strip() for c in line.strip("│┃ ").split("│")]) == len(STATE_ORDER) + 1
    }
    assert rows["tracepoint"] == {**{n: "0" for n in STATE_ORDER}, "ESTABLISHED": "2",
                                  "LISTEN": "1", "TIME_WAIT": "-"}  # fmt: skip
    assert rows["sock_diag"]["TIME_WAIT"] == "5"
