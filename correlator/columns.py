"""Recording frames -> column batches: the one place events become columns.

A KERNEL batch of dicts (every recording so far) and a raw batch of ring
buffer records (bus/rawbatch.py, decoded by numpy) both become the same
polars frames, one per probe; an actor's LOG batch stays a list of its
records (their fields are free-form) with a time column beside it. Each
item gets its arrival number (`tie`), which orders items of equal time.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from bus import rawbatch, rawconvert
from bus.internals import INTERNALS

TCP_SCHEMA: dict[str, Any] = {
    "ts": pl.Int64,
    "tie": pl.Int64,
    "skaddr": pl.UInt64,
    "cpu_pid": pl.Int64,
    "cpu_comm": pl.String,
    "family": pl.Int64,
    "saddr": pl.String,
    "sport": pl.Int64,
    "daddr": pl.String,
    "dport": pl.Int64,
    "old": pl.String,
    "new": pl.String,
}
ACCEPT_SCHEMA: dict[str, Any] = {
    "ts": pl.Int64,
    "tie": pl.Int64,
    "pid": pl.Int64,
    "tid": pl.Int64,
    "syscall": pl.String,
    "lfd": pl.Int64,
    "fd": pl.Int64,
    "errno": pl.Int64,
    "peer_addr": pl.String,
    "peer_port": pl.Int64,
    "dur_ns": pl.Int64,
}
EPOLL_SCHEMA: dict[str, Any] = {
    "ts": pl.Int64,
    "tie": pl.Int64,
    "pid": pl.Int64,
    "tid": pl.Int64,
    "comm": pl.String,
    "syscall": pl.String,
    "epfd": pl.Int64,
    "ready": pl.Int64,
    "errno": pl.Int64,
    "timeout_ms": pl.Int64,
    "dur_ns": pl.Int64,
}
# Kernel records read beside the lifecycles, not ordered with them (a late
# first batch of theirs would count as a loss): fdio by correlator/barrier.py;
# connect's owners are not joined here yet.
NOT_ORDERED = ("connect", "fdio")
SCHEMAS = {"tcp_state": TCP_SCHEMA, "accept": ACCEPT_SCHEMA, "epoll": EPOLL_SCHEMA}
# Dict fields whose absence means this value (the probes always send them).
_DEFAULTS = {"cpu_pid": -1, "pid": -1, "fd": -1}


class Batch:
    """Items of one kind from one envelope, sorted by time (stable).

    A raw batch keeps its ring records (`records`, numpy) and becomes a frame
    only with the rest of its chunk (chunk_frame()): a polars call costs about the
    same for 800 rows as for 50k, and a raw envelope holds ~800."""

    def __init__(
        self,
        kind: str,  # tcp_state, accept, epoll, app, or unknown (a probe we do not know)
        ts: np.ndarray,
        tie: np.ndarray,
        data: Any = None,  # a polars frame (kernel kinds) or a list of records (app)
        records: np.ndarray | None = None,  # raw ring records, in ts order
    ) -> None:
        self.kind = kind
        self.ts = ts
        self.tie = tie
        self._data = data
        self.records = records

    @property
    def data(self) -> Any:
        """A polars frame (kernel kinds) or a list of records (app), in ts order."""
        if self._data is None and self.records is not None:
            self._data = _raw_frame(self.kind, self.records, self.tie, None)
        return self._data


def _sorted(ts: list[int], tie0: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    t = np.asarray(ts, dtype=np.int64)
    tie = np.arange(tie0, tie0 + len(t), dtype=np.int64)
    if len(t) > 1 and bool(np.any(t[1:] < t[:-1])):
        order = np.argsort(t, kind="stable")
        return t[order], tie[order], order
    return t, tie, None


# Each kind's fields as dicts carry them (everything but our own `tie`).
_FIELDS = {
    kind: {k: t for k, t in schema.items() if k != "tie"} for kind, schema in SCHEMAS.items()
}


_FILL_VALUE = _DEFAULTS | {"errno": 0, "ready": 0}
_FILLS = {kind: [k for k in _FILL_VALUE if k in fields] for kind, fields in _FIELDS.items()}


def _fast_frame(kind: str, evs: list[dict[str, Any]]) -> pl.DataFrame | None:
    """The batch as polars reads dicts (in Rust), when every field has the
    probes' own type; None when one does not (the checked path converts)."""
    try:
        df = pl.from_dicts(evs, schema=_FIELDS[kind])
    except (TypeError, ValueError, OverflowError, pl.exceptions.PolarsError):
        return None
    # Column by column, and only where a null is: a frame-level call costs
    # ~50-150 us each in polars, whatever the size, per envelope.
    for k in _FILLS[kind]:
        col = df[k]
        if col.null_count():
            df = df.replace_column(df.get_column_index(k), col.fill_null(_FILL_VALUE[k]))
    return df


def _checked_frame(kind: str, evs: list[dict[str, Any]]) -> pl.DataFrame:
    """The batch field by field, loosely typed values converted (a str skaddr)."""
    cols: dict[str, list[Any]] = {}
    for name in _FIELDS[kind]:
        d = _DEFAULTS.get(name)
        cols[name] = [e.get(name, d) for e in evs]
    if kind == "tcp_state":
        for name, conv in (("skaddr", int), ("old", str), ("new", str), ("cpu_pid", int)):
            cols[name] = [conv(x) for x in cols[name]]
    else:
        cols["pid"] = [int(x) for x in cols["pid"]]
        if kind == "accept":
            cols["fd"] = [int(x) for x in cols["fd"]]
        cols["errno"] = [int(x or 0) for x in cols["errno"]]
        if kind == "epoll":
            cols["ready"] = [int(x or 0) for x in cols["ready"]]
    return pl.DataFrame(cols, schema=_FIELDS[kind], strict=False)


def _all_valid_tcp(evs: list[dict[str, Any]]) -> bool:
    """The probes' own shape (int skaddr and cpu_pid, str states): no check per field."""
    try:
        return (
            all(type(e["skaddr"]) is int for e in evs)
            and all(type(e["old"]) is str and type(e["new"]) is str for e in evs)
            and all(type(e.get("cpu_pid", -1)) is int for e in evs)
        )
    except (KeyError, TypeError):
        return False


def _valid_tcp(ev: dict[str, Any]) -> bool:
    try:
        int(ev["skaddr"]), str(ev["old"]), str(ev["new"]), int(ev.get("cpu_pid", -1))
    except (KeyError, TypeError, ValueError):
        return False
    return True


class Columns:
    """Turns envelopes' bodies into Batches; counts what it cannot use."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.n = counts
        self.tie = 0

    def _count(self, key: str, k: int = 1) -> None:
        self.n[key] = self.n.get(key, 0) + k

    def kernel(self, body: dict[str, Any]) -> list[Batch]:
        """A KERNEL body (a list of event dicts): one Batch per event type."""
        self._count("envelopes.kernel")
        default = str(body.get("probe", ""))
        by_kind: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        for it in body["events"]:
            ts = it.get("ts") if isinstance(it, dict) else None
            if not isinstance(ts, int):
                self._count("rejected.kernel_event")
                continue
            kind = it.get("type") or default
            by_kind.setdefault(kind if kind in SCHEMAS else "unknown", []).append((self.tie, it))
            self.tie += 1
        return [self._dict_batch(kind, items) for kind, items in by_kind.items()]

    def _dict_batch(self, kind: str, items: list[tuple[int, dict[str, Any]]]) -> Batch:
        evs = [e for _, e in items]
        ties = np.fromiter((t for t, _ in items), dtype=np.int64, count=len(items))
        arrival_ties = ties
        ts = np.fromiter((e["ts"] for e in evs), dtype=np.int64, count=len(evs))
        if kind == "tcp_state" and not _all_valid_tcp(evs):
            good = [_valid_tcp(e) for e in evs]
            # Counted as seen and as unusable, as the one-pass engine did.
            bad = len(good) - sum(good)
            self._count("kernel.tcp_state", bad)
            self._count("rejected.kernel_event", bad)
            keep = np.array(good)
            evs = [e for e, g in zip(evs, good, strict=True) if g]
            ts, ties = ts[keep], ties[keep]
            arrival_ties = ties
        order = np.argsort(ts, kind="stable") if len(ts) > 1 else None
        if order is not None and bool(np.all(order[1:] > order[:-1])):
            order = None
        if order is not None:
            ts, ties = ts[order], ties[order]
        if kind == "unknown":
            return Batch(kind, ts, ties, None)
        schema = SCHEMAS[kind]
        df = _fast_frame(kind, evs)
        if df is None:
            df = _checked_frame(kind, evs)
        tie = pl.Series("tie", arrival_ties, dtype=pl.Int64)
        df = pl.DataFrame([tie if k == "tie" else df[k] for k in schema])
        if order is not None:
            df = df[order]
        return Batch(kind, ts, ties, df)

    def raw(self, body: dict[str, Any]) -> list[Batch]:
        """A raw body: ring buffer records of one probe, decoded by numpy."""
        self._count("envelopes.kernel")
        probe = body.get("probe")
        if probe in INTERNALS or probe in NOT_ORDERED:
            # The TCP internals are series per socket, not lifecycle events:
            # correlator/internals.py reads them (reports/build.py feeds both),
            # as correlator/barrier.py reads fdio's.
            return []
        r = rawbatch.decode_batch(body)
        n = len(r)
        ties = np.arange(self.tie, self.tie + n, dtype=np.int64)
        self.tie += n
        ts = r["ts"].astype(np.int64)
        if probe not in SCHEMAS:
            return [Batch("unknown", np.sort(ts), ties)]
        order = np.argsort(ts, kind="stable")
        # A copy in time order (the body's bytes are not kept), moved as
        # whole records: numpy copies a struct with fields field by field.
        records = _whole(r)[order].view(r.dtype)
        return [Batch(probe, ts[order], ties[order], records=records)]

    def log(self, body: dict[str, Any]) -> Batch:
        """A LOG body: the actor's records as they are, with their times."""
        self._count("envelopes.log")
        recs: list[tuple[int, dict[str, Any]]] = []
        for it in body["records"]:
            ts = it.get("mono_ns") if isinstance(it, dict) else None
            if not isinstance(ts, int):
                self._count("rejected.app_record")
                continue
            recs.append((ts, it))
        t, tie, order = _sorted([ts for ts, _ in recs], self.tie)
        self.tie += len(recs)
        data = [r for _, r in recs]
        if order is not None:
            data = [data[i] for i in order.tolist()]
        return Batch("app", t, tie, data)


def _whole(records: np.ndarray) -> np.ndarray:
    """Records as opaque fixed-size items (copies and gathers are memcpy)."""
    return records.view(np.dtype((np.void, records.dtype.itemsize)))


def _text(texts: list[str], index: np.ndarray) -> pl.Series:
    """A text column from its distinct texts and each row's index: one
    polars call instead of a Python str per row."""
    return pl.Series(texts, dtype=pl.String).gather(index.astype(np.uint32))


def _raw_columns(probe: str, r: np.ndarray) -> dict[str, Any]:
    """Ring records as the columns of SCHEMAS[probe] (without tie and pos)."""
    if probe == "tcp_state":
        return {
            "ts": r["ts"].astype(np.int64),
            "skaddr": r["skaddr"].astype(np.uint64),
            "cpu_pid": r["pid"].astype(np.int64),
            "cpu_comm": _text(*rawconvert.comm_codes(r["comm"])),
            "family": r["family"].astype(np.int64),
            "saddr": _text(*rawconvert.addr_codes(r["family"], r["saddr"])),
            "sport": r["sport"].astype(np.int64),
            "daddr": _text(*rawconvert.addr_codes(r["family"], r["daddr"])),
            "dport": r["dport"].astype(np.int64),
            "old": _text(rawconvert.STATE_TABLE, r["oldstate"]),
            "new": _text(rawconvert.STATE_TABLE, r["newstate"]),
        }
    # accept, epoll: numbers cast by numpy (a cast by polars costs a call per column).
    conv: dict[str, Any] = rawconvert.columns(probe, r)
    return {
        k: conv[k].astype(np.int64) if t == pl.Int64 else conv[k]
        for k, t in SCHEMAS[probe].items()
        if k != "tie"
    }


def _raw_frame(probe: str, r: np.ndarray, tie: np.ndarray, pos: np.ndarray | None) -> pl.DataFrame:
    cols = _raw_columns(probe, r)
    cols["tie"] = tie
    schema = dict(SCHEMAS[probe])
    if pos is not None:
        cols["pos"] = pos
        schema["pos"] = pl.Int64
    return pl.DataFrame({k: cols[k] for k in schema}, schema=schema)


def chunk_frame(parts: list[tuple[Batch, int, int, np.ndarray]]) -> pl.DataFrame:
    """One frame of a chunk's batches of one kind: each part's rows lo:hi,
    with their positions (`pos`), in position order. Raw records of one
    layout are decoded together, once per chunk."""
    recs = [b.records for b, _, _, _ in parts]
    first = recs[0]
    if first is not None and all(r is not None and r.dtype == first.dtype for r in recs):
        pos = np.concatenate([p for _, _, _, p in parts])
        order = np.argsort(pos)
        whole = [_whole(b.records[lo:hi]) for b, lo, hi, _ in parts]  # type: ignore[index]
        r = np.concatenate(whole)[order].view(first.dtype)
        tie = np.concatenate([b.tie[lo:hi] for b, lo, hi, _ in parts])[order]
        return _raw_frame(parts[0][0].kind, r, tie, pos[order])
    dfs = [b.data.slice(lo, hi - lo).hstack([pl.Series("pos", p)]) for b, lo, hi, p in parts]
    return pl.concat(dfs).sort("pos")
