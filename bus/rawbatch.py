"""Raw kernel records on the bus: the KERNEL_RAW batch body and its decoding.

The probe process ships what the BPF programs write into their ring
buffers as it is: the bytes of N records of one C struct from
probes/events.h, back to back, with a description of that struct's layout
(field names, numpy formats, offsets, record size). The description is
derived from the ctypes class bcc parses out of events.h (probes/layout.py),
so the C struct stays the one definition; it travels with every batch, so a
recording decodes offline, from any batch on, without bcc.

    body = {"probe": "tcp_state", "layout": Layout, "records": bytes}

Decoding is vectorised: `decode_batch(body)` is one `np.frombuffer` over the
records with the layout's structured dtype (memoized by the layout's id),
whose field names are those of events.h (ts, skaddr, pid, ..., oldstate,
newstate, saddr, daddr for tcp_state_event). `events(probe, records)` turns
such an array into the dicts of bus/records.py (`tcplab watch`, `doctor`);
addresses and command names are converted once per distinct value, not per
record. `check_body(body)` is what the bus checks at its boundary (the
layout against its id, the fields each probe's consumers read, whole
records, times that fit an int64), so consumers never see a body they
cannot decode.

Pure code: numpy and the standard library only, so that the correlator and
`tcplab report` read a recording on a machine without bcc.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
from collections.abc import Callable, Mapping
from typing import Any, TypedDict

import numpy as np

from bus.internals import CONG_STATES, SAMPLE_WHY, SOCK_EVENTS
from bus.records import TCP_STATES

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


# What consumers read of each known probe's records (events.h's field names):
# "int" any integer, "text" a char array, "addr" a u8[16] address image.
FIELDS: dict[str, dict[str, str]] = {
    "tcp_state": {
        "ts": "int", "skaddr": "int", "pid": "int", "tid": "int", "comm": "text",
        "family": "int", "sport": "int", "dport": "int", "oldstate": "int",
        "newstate": "int", "saddr": "addr", "daddr": "addr",
    },
    "accept": {
        "ts": "int", "dur_ns": "int", "pid": "int", "tid": "int", "comm": "text", "lfd": "int",
        "fd": "int", "err": "int", "family": "int", "peer_port": "int", "peer_addr": "addr",
        "syscall": "int",
    },
    "epoll": {
        "ts": "int", "dur_ns": "int", "pid": "int", "tid": "int", "comm": "text", "epfd": "int",
        "maxevents": "int", "timeout_ms": "int", "ready": "int", "err": "int", "syscall": "int",
    },
    "tcp_probe": {
        "ts": "int", "skaddr": "int", "snd_cwnd": "int", "ssthresh": "int", "snd_wnd": "int",
        "rcv_wnd": "int", "srtt_us": "int", "snd_nxt": "int", "snd_una": "int", "hits": "int",
        "family": "int", "sport": "int", "dport": "int", "data_len": "int", "why": "int",
        "saddr": "addr", "daddr": "addr",
    },
    "tcp_events": {
        "ts": "int", "skaddr": "int", "pid": "int", "code": "int", "family": "int",
        "sport": "int", "dport": "int", "what": "int", "state": "int", "saddr": "addr",
        "daddr": "addr",
    },
    "connect": {
        "ts": "int", "dur_ns": "int", "skaddr": "int", "pid": "int", "tid": "int",
        "comm": "text", "fd": "int", "err": "int", "family": "int", "dport": "int",
        "daddr": "addr",
    },
    "fdio": {
        "ts": "int", "pid": "int", "tid": "int", "comm": "text", "fd": "int", "err": "int",
        "kind": "int", "syscall": "int", "how": "int", "skaddr": "int",
        **{f: "int" for f in FD_COUNTERS},
    },
    "proc": {"ts": "int", "pid": "int", "child": "int", "comm": "text", "kind": "int"},
}  # fmt: skip
_TS_MAX = np.iinfo(np.int64).max
# State and syscall numbers index tables of 256: one byte.
_BYTE_FIELDS = ("oldstate", "newstate", "syscall", "why", "what", "state", "kind", "how")


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
    if name in _BYTE_FIELDS:
        return f.shape == () and f == np.dtype(np.uint8)
    return f.shape == () and f.kind in "ui"


def check_body(body: Mapping[str, Any]) -> None:
    """Raise RawBatchError unless `body` decodes: a known-good layout, with the
    fields its consumers read (FIELDS; an unknown probe's records at least an
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


# ---------------------------------------------------------------- columns


def _per_distinct(values: np.ndarray, convert: Callable[[Any], str]) -> list[str]:
    """convert() applied once per distinct value, the results spread back."""
    if values.size == 0:
        return []
    uniq, inverse = np.unique(values, return_inverse=True)
    texts = np.array([convert(v) for v in uniq.tolist()], dtype=object)
    out: list[str] = texts[inverse.reshape(-1)].tolist()
    return out


def _addr(key: tuple[int, bytes]) -> str:
    family, raw = key
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    if family == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, raw[:16])
    return ""


def addr_text(family: np.ndarray, addr: np.ndarray) -> list[str]:
    """Text addresses ("127.0.0.1", "::1", "" for other families) of a family
    column and a column of 16-byte address images (u8[16] in events.h)."""
    key = np.empty(len(family), dtype=[("family", "<u2"), ("addr", "V16")])
    key["family"] = family
    key["addr"] = (
        np.ascontiguousarray(addr, dtype=np.uint8).reshape(len(family), 16).view("V16")[:, 0]
    )
    return _per_distinct(key, lambda k: _addr((k[0], bytes(k[1]))))


def comm_text(comm: np.ndarray) -> list[str]:
    """Command names of a char[16] column, cut at the first NUL as the kernel ends them."""
    return _per_distinct(comm, lambda raw: raw.split(b"\0", 1)[0].decode(errors="replace"))


# u8 state -> name; numbers a newer kernel adds come out as digits.
_STATE_NAMES = np.array(
    [TCP_STATES[n] if n < len(TCP_STATES) else str(n) for n in range(256)], dtype=object
)


def state_names(states: np.ndarray) -> list[str]:
    out: list[str] = _STATE_NAMES[states.astype(np.intp)].tolist()
    return out


def _names(table: tuple[str, ...], codes: np.ndarray) -> list[str]:
    names = np.array(list(table) + [str(n) for n in range(len(table), 256)], dtype=object)
    out: list[str] = names[codes.astype(np.intp)].tolist()
    return out


_LISTEN, _SYN_RECV, _CLOSE = (TCP_STATES.index(n) for n in ("LISTEN", "SYN_RECV", "CLOSE"))


def state_balance(records: np.ndarray) -> np.ndarray:
    """Per TCP state number (256 slots), the sockets that entered it minus
    those that left it in these tcp_state records: summed over batches, how
    many sockets are in each state now, of those the probes saw change.

    A server's child is cloned from its listener, so its first transition
    reads LISTEN -> SYN_RECV (measured, docs/probes.md): it enters SYN_RECV,
    but the listener does not leave LISTEN."""
    old, new = records["oldstate"], records["newstate"]
    left = old[~((old == _LISTEN) & (new == _SYN_RECV))]
    out: np.ndarray = np.bincount(new, minlength=256) - np.bincount(left, minlength=256)
    return out


def state_counts(balance: np.ndarray) -> dict[str, int]:
    """A state_balance() sum as {state name: sockets} for the states that hold
    some, CLOSE left out (where sockets come from and go to). Sockets that
    were there before the probes attached and left a state since count below
    zero there: shown as none; so do the states a kprobe on tcp_set_state
    never sees entered (SYN_RECV, LISTEN)."""
    held = np.flatnonzero(balance > 0)
    return {str(_STATE_NAMES[n]): int(balance[n]) for n in held if n != _CLOSE}


# ---------------------------------------------------------------- dicts


def events(probe: str, records: np.ndarray) -> list[dict[str, Any]]:
    """The records of one batch as bus/records.py dicts (TcpStateEvent,
    AcceptEvent, EpollEvent), built column by column."""
    r = records
    if probe == "tcp_state":
        cols = {
            "ts": r["ts"].tolist(),
            "skaddr": r["skaddr"].tolist(),
            "cpu_pid": r["pid"].tolist(),
            "cpu_tid": r["tid"].tolist(),
            "cpu_comm": comm_text(r["comm"]),
            "family": r["family"].tolist(),
            "saddr": addr_text(r["family"], r["saddr"]),
            "sport": r["sport"].tolist(),
            "daddr": addr_text(r["family"], r["daddr"]),
            "dport": r["dport"].tolist(),
            "old": state_names(r["oldstate"]),
            "new": state_names(r["newstate"]),
        }
    elif probe == "accept":
        cols = {
            "ts": r["ts"].tolist(),
            "pid": r["pid"].tolist(),
            "tid": r["tid"].tolist(),
            "comm": comm_text(r["comm"]),
            "syscall": _names(ACCEPT_SYSCALLS, r["syscall"]),
            "lfd": r["lfd"].tolist(),
            "fd": r["fd"].tolist(),
            "errno": r["err"].tolist(),
            "family": r["family"].tolist(),
            "peer_addr": addr_text(r["family"], r["peer_addr"]),
            "peer_port": r["peer_port"].tolist(),
            "dur_ns": r["dur_ns"].tolist(),
        }
    elif probe == "epoll":
        cols = {
            "ts": r["ts"].tolist(),
            "pid": r["pid"].tolist(),
            "tid": r["tid"].tolist(),
            "comm": comm_text(r["comm"]),
            "syscall": _names(EPOLL_SYSCALLS, r["syscall"]),
            "epfd": r["epfd"].tolist(),
            "maxevents": r["maxevents"].tolist(),
            "timeout_ms": r["timeout_ms"].tolist(),
            "ready": r["ready"].tolist(),
            "errno": r["err"].tolist(),
            "dur_ns": r["dur_ns"].tolist(),
        }
    elif probe == "tcp_probe":
        cols = {
            "ts": r["ts"].tolist(),
            "skaddr": r["skaddr"].tolist(),
            "family": r["family"].tolist(),
            "saddr": addr_text(r["family"], r["saddr"]),
            "sport": r["sport"].tolist(),
            "daddr": addr_text(r["family"], r["daddr"]),
            "dport": r["dport"].tolist(),
            "snd_cwnd": r["snd_cwnd"].tolist(),
            "ssthresh": r["ssthresh"].tolist(),
            "snd_wnd": r["snd_wnd"].tolist(),
            "rcv_wnd": r["rcv_wnd"].tolist(),
            "srtt_us": r["srtt_us"].tolist(),
            "in_flight": (r["snd_nxt"] - r["snd_una"]).astype(np.uint32).tolist(),
            "data_len": r["data_len"].tolist(),
            "hits": r["hits"].tolist(),
            "why": _names(SAMPLE_WHY, r["why"]),
        }
    elif probe == "tcp_events":
        what = _names(SOCK_EVENTS, r["what"])
        cong = _names(CONG_STATES, np.clip(r["code"], 0, 255))
        cols = {
            "ts": r["ts"].tolist(),
            "what": what,
            "skaddr": r["skaddr"].tolist(),
            "cpu_pid": r["pid"].tolist(),
            "family": r["family"].tolist(),
            "saddr": addr_text(r["family"], r["saddr"]),
            "sport": r["sport"].tolist(),
            "daddr": addr_text(r["family"], r["daddr"]),
            "dport": r["dport"].tolist(),
            "state": state_names(r["state"]),
            "code": r["code"].tolist(),
            "cong_state": [c if w == "cong_state" else "" for w, c in zip(what, cong, strict=True)],
        }
    elif probe == "connect":
        cols = {
            "ts": r["ts"].tolist(),
            "pid": r["pid"].tolist(),
            "tid": r["tid"].tolist(),
            "comm": comm_text(r["comm"]),
            "fd": r["fd"].tolist(),
            "skaddr": r["skaddr"].tolist(),
            "errno": r["err"].tolist(),
            "family": r["family"].tolist(),
            "daddr": addr_text(r["family"], r["daddr"]),
            "dport": r["dport"].tolist(),
            "dur_ns": r["dur_ns"].tolist(),
        }
    elif probe == "proc":
        cols = {
            "ts": r["ts"].tolist(),
            "pid": r["pid"].tolist(),
            "child": r["child"].tolist(),
            "comm": comm_text(r["comm"]),
            "what": _names(PROC_KINDS, r["kind"]),
        }
    elif probe == "fdio":
        cols = {
            "ts": r["ts"].tolist(),
            "pid": r["pid"].tolist(),
            "tid": r["tid"].tolist(),
            "comm": comm_text(r["comm"]),
            "fd": r["fd"].tolist(),
            "what": _names(FD_KINDS, r["kind"]),
            "syscall": _names(IO_SYSCALLS, r["syscall"]),
            "errno": r["err"].tolist(),
            "how": _names(FD_HOW, r["how"]),
            "skaddr": r["skaddr"].tolist(),
            **{f: r[f].tolist() for f in FD_COUNTERS},
        }
    else:
        raise RawBatchError(
            f"unknown probe {probe!r}: tcp_state, accept, epoll, tcp_probe, tcp_events, "
            "connect, fdio or proc"
        )
    keys = ["type", *cols]
    return [
        dict(zip(keys, row, strict=True))
        for row in zip([probe] * len(r), *cols.values(), strict=True)
    ]


def batch_events(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A KERNEL_RAW body's records as bus/records.py dicts. Raises RawBatchError."""
    check_body(body)
    return events(body["probe"], decode_batch(body))
