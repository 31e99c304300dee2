"""Raw kernel records as consumers read them: columns, dicts, state counts.

A KERNEL_RAW batch decodes to one numpy structured array (bus/rawbatch.py
decode_batch); this module turns such an array into what its consumers
want, column by column, as bus/rawbatch.py COLUMNS describes each probe's
records: `columns()` the converted columns (numpy arrays for numbers, lists
of text), `events()` the dicts of bus/records.py (`tcplab watch`, `doctor`,
the correlator's accept and epoll). Addresses and command names are
converted once per distinct value, not per record. `state_balance()` and
`state_counts()` are the live view's TCP states, counted straight from the
tcp_state records.

Pure code: numpy and the standard library only (see bus/rawbatch.py).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from bus.rawbatch import COLUMNS, Col, RawBatchError, check_body, decode_batch
from bus.records import TCP_STATES


def _distinct(values: np.ndarray, convert: Callable[[Any], str]) -> tuple[list[str], np.ndarray]:
    """convert() applied once per distinct value: the texts, and for each
    value the index of its text."""
    uniq, inverse = np.unique(values, return_inverse=True)
    return [convert(v) for v in uniq.tolist()], inverse.reshape(-1)


def _addr(key: tuple[int, bytes]) -> str:
    family, raw = key
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    if family == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, raw[:16])
    return ""


def _distinct_rows(keys: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Rows' distinct values over integer key columns: one row's index per
    distinct value, and each row's value number (an index into those).
    Integer sorts: numpy's unique on raw bytes (void) compares them one by
    one, ~1 us a row."""
    n = len(keys[0])
    order = np.lexsort(keys[::-1])
    new = np.zeros(n, dtype=bool)
    new[:1] = True
    for k in keys:
        ks = k[order]
        new[1:] |= ks[1:] != ks[:-1]
    inverse = np.empty(n, dtype=np.intp)
    inverse[order] = np.cumsum(new) - 1
    return order[new], inverse


def _words(values: np.ndarray) -> list[np.ndarray]:
    """Fixed-size byte values (n, k*8 bytes) as k columns of u64."""
    words = np.ascontiguousarray(values).view("<u8").reshape(len(values), -1)
    return [words[:, i] for i in range(words.shape[1])]


def addr_codes(family: np.ndarray, addr: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Text addresses ("127.0.0.1", "::1", "" for other families) of a family
    column and a column of 16-byte address images (u8[16] in events.h), as
    their distinct texts and each record's index into them (a consumer that
    builds its own text column spreads them in one step)."""
    if len(family) == 0:
        return [], np.empty(0, np.intp)
    images = np.ascontiguousarray(addr, dtype=np.uint8).reshape(len(family), 16)
    firsts, inverse = _distinct_rows([family.astype(np.uint64), *_words(images)])
    fams = family[firsts].tolist()
    texts = [_addr((f, images[i].tobytes())) for f, i in zip(fams, firsts.tolist(), strict=True)]
    return texts, inverse


def _comm(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def comm_codes(comm: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Command names of a char[N] column, cut at the first NUL as the kernel
    ends them: the distinct names and each record's index into them."""
    if len(comm) == 0:
        return [], np.empty(0, np.intp)
    if comm.dtype.itemsize % 8:
        return _distinct(comm, _comm)
    firsts, inverse = _distinct_rows(_words(comm))
    return [_comm(b) for b in comm[firsts].tolist()], inverse


def _spread(codes: tuple[list[str], np.ndarray]) -> list[str]:
    texts, inverse = codes
    out: list[str] = np.array(texts, dtype=object)[inverse].tolist() if len(inverse) else []
    return out


def addr_text(family: np.ndarray, addr: np.ndarray) -> list[str]:
    """addr_codes() as one text per record."""
    return _spread(addr_codes(family, addr))


def comm_text(comm: np.ndarray) -> list[str]:
    """comm_codes() as one text per record."""
    return _spread(comm_codes(comm))


def _table(names: tuple[str, ...]) -> np.ndarray:
    """A u8 code -> name lookup: the codes past the table's end as digits
    (numbers a newer kernel or program adds)."""
    return np.array([*names, *(str(n) for n in range(len(names), 256))], dtype=object)


_STATE_NAMES = _table(TCP_STATES)
# names tuple -> its lookup, built once per table
_TABLES: dict[tuple[str, ...], np.ndarray] = {TCP_STATES: _STATE_NAMES}


def names_of(names: tuple[str, ...], codes: np.ndarray) -> list[str]:
    """The names of u8 codes in `names` (digits past its end)."""
    table = _TABLES.get(names)
    if table is None:
        table = _TABLES[names] = _table(names)
    out: list[str] = table[codes.astype(np.intp)].tolist()
    return out


STATE_TABLE: list[str] = _STATE_NAMES.tolist()  # u8 state number -> its name


def state_names(states: np.ndarray) -> list[str]:
    """TCP state numbers as the kernel's names ("ESTABLISHED"; digits for unknown ones)."""
    return names_of(TCP_STATES, states)


def _gated(r: np.ndarray, c: Col) -> list[str]:
    names = names_of(c.names, np.clip(r[c.source], 0, 255))
    return [n if on else "" for n, on in zip(names, (r[c.other] == c.when).tolist(), strict=True)]


# Col.how -> the column it makes of the records: an array of numbers or a list of texts.
_CONVERT: dict[str, Callable[[np.ndarray, Col], np.ndarray | list[str]]] = {
    "int": lambda r, c: r[c.source],
    "text": lambda r, c: comm_text(r[c.source]),
    "addr": lambda r, c: addr_text(r["family"], r[c.source]),
    "state": lambda r, c: state_names(r[c.source]),
    "name": lambda r, c: names_of(c.names, r[c.source]),
    "seq": lambda r, c: (r[c.source] - r[c.other]).astype(np.uint32),
    "gated": _gated,
}


def columns(probe: str, records: np.ndarray) -> dict[str, np.ndarray | list[str]]:
    """The records of one batch as named columns, in the order of the
    probe's dicts (bus/rawbatch.py COLUMNS). Raises RawBatchError for a
    probe without a description."""
    cols = COLUMNS.get(probe)
    if cols is None:
        raise RawBatchError(f"unknown probe {probe!r}: {', '.join(COLUMNS)}")
    return {c.key: _CONVERT[c.how](records, c) for c in cols}


def events(probe: str, records: np.ndarray) -> list[dict[str, Any]]:
    """The records of one batch as bus/records.py dicts (TcpStateEvent,
    AcceptEvent, EpollEvent, ...), built column by column."""
    cols = columns(probe, records)
    values = [v.tolist() if isinstance(v, np.ndarray) else v for v in cols.values()]
    keys = ["type", *cols]
    return [
        dict(zip(keys, row, strict=True))
        for row in zip([probe] * len(records), *values, strict=True)
    ]


def batch_events(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A KERNEL_RAW body's records as bus/records.py dicts. Raises RawBatchError."""
    check_body(body)
    return events(body["probe"], decode_batch(body))


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
