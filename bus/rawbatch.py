"""Raw kernel records on the bus: the KERNEL_RAW batch body, its contract.

The probe process ships what the BPF programs write into their ring
buffers as it is: the bytes of N records of one C struct from
probes/events.h, back to back, with a description of that struct's layout
(field names, numpy formats, offsets, record size). The description is
derived from the ctypes class bcc parses out of events.h (probes/layout.py),
so the C struct stays the one definition; it travels with every batch, so a
recording decodes offline, from any batch on, without bcc.

    body = {"probe": "tcp_state", "layout": Layout, "records": bytes}

`decode_batch(body)` is one `np.frombuffer` over the records with the
layout's structured dtype (memoized by the layout's id), whose field names
are those of events.h (ts, skaddr, pid, ..., oldstate, newstate, saddr,
daddr for tcp_state_event). COLUMNS says, once per probe, which fields its
consumers read and what each becomes in the bus/records.py dicts;
bus/rawconvert.py does the converting from that table. `check_body(body)`
is what the bus checks at its boundary (the layout against its id, the
fields COLUMNS reads, whole records, times that fit an int64), so
consumers never see a body they cannot decode.

Pure code: numpy and the standard library only, so that the correlator and
`tcplab report` read a recording on a machine without bcc.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple, TypedDict

import numpy as np

from bus.internals import CONG_STATES, SAMPLE_WHY, SOCK_EVENTS

# The syscall numbering of accept_event.syscall and epoll_call_event.syscall:
# the position in these tuples. probes/program.py hands them to the C code as
# -D flags (TCPLAB_SYS_ACCEPT4=1, ...), so this is their one definition.
ACCEPT_SYSCALLS = ("accept", "accept4")
EPOLL_SYSCALLS = ("epoll_wait", "epoll_pwait", "epoll_pwait2")
# The syscall barrier's numbering (fd_event.kind, .syscall, .how), the same
# way. The reads come first: the C code tells a read by syscall < WRITE.
FD_KINDS = ("eof", "close", "error")
IO_SYSCALLS = (
    "read", "readv", "recvfrom", "recvmsg",
    "write", "writev", "sendto", "sendmsg", "sendfile", "close",
)  # fmt: skip
FD_HOW = ("unknown", "accept", "connect")
PROC_KINDS = ("fork", "exec")
# struct fd_counters' figures as every fd_event carries them.
FD_COUNTERS = (
    "opened_ts", "eof_ts", "reads", "read_bytes", "writes", "write_bytes",
    "eagain_reads", "eagain_writes", "errors",
)  # fmt: skip

# The numpy formats a layout may use: little- or big-endian integers, byte
# strings (char arrays), opaque bytes, and fixed-size arrays of those. Never
# objects: a description comes from the wire.
_FORMAT = re.compile(r"(\(\d{1,4},\))?([<>|][ui][1248]|\|S\d{1,4}|\|V\d{1,4})")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
MAX_ITEMSIZE = 4096
# A lab run sees three layouts; a hostile sender could invent more.
_MEMO_LIMIT = 64


class RawBatchError(ValueError):
    """A KERNEL_RAW body that cannot be decoded; the message says why."""


class Layout(TypedDict):
    """One C struct's layout, as numpy describes a structured dtype."""

    id: str  # a hash of the other fields: the key receivers memoize the dtype by
    names: list[str]
    formats: list[str]
    offsets: list[int]
    itemsize: int


def _digest(names: Any, formats: Any, offsets: Any, itemsize: Any) -> str:
    text = json.dumps([names, formats, offsets, itemsize], separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def make_layout(names: list[str], formats: list[str], offsets: list[int], itemsize: int) -> Layout:
    """A layout with its id; raises RawBatchError where numpy would not take it."""
    layout = Layout(
        id=_digest(names, formats, offsets, itemsize),
        names=list(names),
        formats=list(formats),
        offsets=list(offsets),
        itemsize=itemsize,
    )
    _build_dtype(layout)
    return layout


# id -> (the description it was checked against, its dtype)
_DTYPES: dict[str, tuple[tuple[Any, ...], np.dtype[Any]]] = {}


def dtype_of(layout: Mapping[str, Any]) -> np.dtype[Any]:
    """The structured dtype a layout describes: built and checked against its id
    once, then memoized by id (a batch costs a lookup and a list comparison)."""
    if not isinstance(layout, Mapping):
        raise RawBatchError("layout is not a map")
    key = layout.get("id")
    desc = (
        layout.get("names"),
        layout.get("formats"),
        layout.get("offsets"),
        layout.get("itemsize"),
    )
    known = _DTYPES.get(key) if isinstance(key, str) else None
    if known is not None and known[0] == desc:
        return known[1]
    dt = _build_dtype(layout)
    if key != _digest(*desc):
        raise RawBatchError(f"layout id {key!r} is not the hash of its description")
    if len(_DTYPES) >= _MEMO_LIMIT:
        _DTYPES.clear()
    _DTYPES[key] = (desc, dt)
    return dt


def _build_dtype(layout: Mapping[str, Any]) -> np.dtype[Any]:
    names, formats = layout.get("names"), layout.get("formats")
    offsets, itemsize = layout.get("offsets"), layout.get("itemsize")
    if not (
        isinstance(names, list)
        and isinstance(formats, list)
        and isinstance(offsets, list)
        and len(names) == len(formats) == len(offsets) > 0
    ):
        raise RawBatchError("layout needs names, formats and offsets: lists of one length")
    if type(itemsize) is not int or not 0 < itemsize <= MAX_ITEMSIZE:
        raise RawBatchError(f"layout itemsize {itemsize!r} is not 1..{MAX_ITEMSIZE}")
    for n, f, o in zip(names, formats, offsets, strict=True):
        if not (isinstance(n, str) and _NAME.fullmatch(n)):
            raise RawBatchError(f"layout field name {n!r} is not an identifier")
        if not (isinstance(f, str) and _FORMAT.fullmatch(f)):
            raise RawBatchError(f"layout field {n} has format {f!r}: not a plain scalar")
        if type(o) is not int or o < 0:
            raise RawBatchError(f"layout field {n} has offset {o!r}")
    try:
        dt = np.dtype(
            {"names": names, "formats": formats, "offsets": offsets, "itemsize": itemsize}
        )
    except (ValueError, TypeError) as e:
        raise RawBatchError(f"layout is not a valid record: {e}") from None
    fields: Mapping[str, Any] = dt.fields or {}
    if any(o + fields[n][0].itemsize > itemsize for n, o in zip(names, offsets, strict=True)):
        raise RawBatchError("layout has a field beyond the record's size")
    return dt


def make_body(probe: str, layout: Layout, records: bytes) -> dict[str, Any]:
    """The KERNEL_RAW body for `records`: whole records of `layout`, back to back."""
    return {"probe": probe, "layout": layout, "records": records}


# ---------------------------------------------------------------- columns

# How a column comes out of a record's field(s):
#   int    the integer as it is
#   text   a char array, cut at its first NUL (command names)
#   addr   a u8[16] address image, as text by the record's `family`
#   state  a u8 TCP state number, as its name (bus.records.TCP_STATES)
#   name   a u8 code, as its name in `names` (digits past its end)
#   seq    `field` minus `other`, modulo 2**32 (sequence-number distances)
#   gated  an integer code clipped to 0..255, as its name in `names` where
#          the u8 field `other` equals `when`, else ""
How = Literal["int", "text", "addr", "state", "name", "seq", "gated"]


class Col(NamedTuple):
    """One column of a probe's records as consumers see them: `key` in the
    bus/records.py dict, made from events.h's `field` (and `other`) as `how` says."""

    key: str
    field: str = ""  # the events.h field; "" = the same as key
    how: How = "int"
    names: tuple[str, ...] = ()
    other: str = ""
    when: int = 0

    @property
    def source(self) -> str:
        return self.field or self.key


_CONG_STATE = SOCK_EVENTS.index("cong_state")

# Each known probe's records, one description: the dicts' keys in their
# order and where each comes from. What the bus checks a batch against
# (FIELDS, below) is derived from it, so a consumer never reads a field
# that the bus did not check.
COLUMNS: dict[str, tuple[Col, ...]] = {
    "tcp_state": (
        Col("ts"), Col("skaddr"), Col("cpu_pid", "pid"), Col("cpu_tid", "tid"),
        Col("cpu_comm", "comm", "text"), Col("family"), Col("saddr", how="addr"), Col("sport"),
        Col("daddr", how="addr"), Col("dport"), Col("old", "oldstate", "state"),
        Col("new", "newstate", "state"),
    ),
    "accept": (
        Col("ts"), Col("pid"), Col("tid"), Col("comm", how="text"),
        Col("syscall", how="name", names=ACCEPT_SYSCALLS), Col("lfd"), Col("fd"),
        Col("errno", "err"), Col("family"), Col("peer_addr", how="addr"), Col("peer_port"),
        Col("dur_ns"),
    ),
    "epoll": (
        Col("ts"), Col("pid"), Col("tid"), Col("comm", how="text"),
        Col("syscall", how="name", names=EPOLL_SYSCALLS), Col("epfd"), Col("maxevents"),
        Col("timeout_ms"), Col("ready"), Col("errno", "err"), Col("dur_ns"),
    ),
    "tcp_probe": (
        Col("ts"), Col("skaddr"), Col("family"), Col("saddr", how="addr"), Col("sport"),
        Col("daddr", how="addr"), Col("dport"), Col("snd_cwnd"), Col("ssthresh"),
        Col("snd_wnd"), Col("rcv_wnd"), Col("srtt_us"),
        Col("in_flight", "snd_nxt", "seq", other="snd_una"), Col("data_len"), Col("hits"),
        Col("why", how="name", names=SAMPLE_WHY),
    ),
    "tcp_events": (
        Col("ts"), Col("what", how="name", names=SOCK_EVENTS), Col("skaddr"),
        Col("cpu_pid", "pid"), Col("family"), Col("saddr", how="addr"), Col("sport"),
        Col("daddr", how="addr"), Col("dport"), Col("state", how="state"), Col("code"),
        Col("cong_state", "code", "gated", CONG_STATES, other="what", when=_CONG_STATE),
    ),
    "connect": (
        Col("ts"), Col("pid"), Col("tid"), Col("comm", how="text"), Col("fd"), Col("skaddr"),
        Col("errno", "err"), Col("family"), Col("daddr", how="addr"), Col("dport"),
        Col("dur_ns"),
    ),
    "proc": (
        Col("ts"), Col("pid"), Col("child"), Col("comm", how="text"),
        Col("what", "kind", "name", PROC_KINDS),
    ),
    "fdio": (
        Col("ts"), Col("pid"), Col("tid"), Col("comm", how="text"), Col("fd"),
        Col("what", "kind", "name", FD_KINDS), Col("syscall", how="name", names=IO_SYSCALLS),
        Col("errno", "err"), Col("how", how="name", names=FD_HOW), Col("skaddr"),
        *(Col(f) for f in FD_COUNTERS),
    ),
}  # fmt: skip


def _reads(cols: tuple[Col, ...]) -> dict[str, str]:
    """The fields a description reads and what each must be: "int" any
    integer, "byte" a u8 (it indexes a table of 256), "text" a char array,
    "addr" a u8[16] address image."""
    out: dict[str, str] = {}
    for c in cols:
        if c.how == "text":
            out[c.source] = "text"
        elif c.how == "addr":
            out[c.source] = "addr"
            out.setdefault("family", "int")
        elif c.how in ("state", "name"):
            out[c.source] = "byte"
        else:
            out.setdefault(c.source, "int")
        if c.other:
            out[c.other] = "byte" if c.how == "gated" else "int"
    return out


# What consumers read of each known probe's records (events.h's field names).
FIELDS: dict[str, dict[str, str]] = {probe: _reads(cols) for probe, cols in COLUMNS.items()}
_TS_MAX = np.iinfo(np.int64).max


def _fits(dt: np.dtype[Any], name: str, kind: str) -> bool:
    if dt.names is None or name not in dt.names:
        return False
    f = dt.fields[name][0] if dt.fields else None
    if f is None:
        return False
    if kind == "text":
        return f.kind == "S"
    if kind == "addr":
        return f.shape == (16,) and f.base == np.dtype(np.uint8)
    if kind == "byte":
        return f.shape == () and f == np.dtype(np.uint8)
    return f.shape == () and f.kind in "ui"


def check_body(body: Mapping[str, Any]) -> None:
    """Raise RawBatchError unless `body` decodes: a known-good layout, with the
    fields its consumers read (FIELDS, from COLUMNS; an unknown probe's records at least an
    integer ts), and whole records. What the bus checks at its boundary,
    without touching a record."""
    records = body.get("records")
    if not isinstance(records, bytes | bytearray | memoryview):
        raise RawBatchError("records is not bytes")
    probe = body.get("probe")
    if not isinstance(probe, str):
        raise RawBatchError("probe is not a string")
    dt = dtype_of(body.get("layout"))  # type: ignore[arg-type]
    if len(records) % dt.itemsize:
        raise RawBatchError(f"{len(records)} bytes are not whole records of {dt.itemsize}")
    # Every record has its time, whichever probe wrote it (the merge orders by it).
    wanted = FIELDS.get(probe, {"ts": "int"})
    wrong = [n for n, kind in wanted.items() if not _fits(dt, n, kind)]
    if wrong:
        raise RawBatchError(f"{probe} records lack or mistype {', '.join(wrong)}")
    # Times are CLOCK_MONOTONIC nanoseconds: consumers hold them as int64.
    ts = np.frombuffer(records, dtype=dt)["ts"]
    if ts.size and (ts.min() < 0 or ts.max() > _TS_MAX):
        raise RawBatchError("a record's ts is not a CLOCK_MONOTONIC time (0 .. 2**63-1 ns)")


def decode_batch(body: Mapping[str, Any]) -> np.ndarray:
    """A KERNEL_RAW body as a numpy structured array, one row per record, with
    the field names of events.h. A view of the body's bytes (read-only): copy
    it to keep it beyond the body. Raises RawBatchError."""
    records = body.get("records")
    if not isinstance(records, bytes | bytearray | memoryview):
        raise RawBatchError("records is not bytes")
    dt = dtype_of(body.get("layout"))  # type: ignore[arg-type]
    if len(records) % dt.itemsize:
        raise RawBatchError(f"{len(records)} bytes are not whole records of {dt.itemsize}")
    return np.frombuffer(records, dtype=dt)


def count(body: Mapping[str, Any]) -> int:
    """How many records a (valid) KERNEL_RAW body holds, without decoding it."""
    return len(body["records"]) // int(body["layout"]["itemsize"])
