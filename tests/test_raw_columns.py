"""The correlator's columns straight from raw accept and epoll records
(correlator/columns.py) are the ones their dicts give (bus/rawconvert.py's
events, the path every earlier recording took): same values, same order."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from bus.rawbatch import make_body, make_layout
from bus.rawconvert import batch_events
from bus.records import TCP_STATES
from correlator.columns import Columns, chunk_frame
from tests.test_rawbatch import (
    ACCEPT,
    ACCEPT_PACK,
    EPOLL,
    EPOLL_PACK,
    TCP_STATE,
    TCP_STATE_PACK,
    V4_LOOP,
    V6_LOOP,
)


def _both(body: dict[str, Any]) -> tuple[pl.DataFrame, pl.DataFrame, list[int]]:
    (raw,) = Columns({}).raw(body)
    (dicts,) = Columns({}).kernel({"probe": body["probe"], "events": batch_events(body)})
    assert raw.ts.tolist() == dicts.ts.tolist()
    assert raw.tie.tolist() == dicts.tie.tolist()
    assert raw.data.schema == dicts.data.schema
    return raw.data, dicts.data, raw.tie.tolist()


def test_raw_accept_records_give_their_dicts_columns() -> None:
    """Out of time order, IPv4 and IPv6 peers, a failed call without a peer,
    a command name with bytes after its NUL, a syscall number past the table."""
    body = make_body(
        "accept",
        ACCEPT,
        ACCEPT_PACK.pack(30, 5_000, 42, 43, b"server", 3, 7, 0, 10, 40001, V6_LOOP, 1)
        + ACCEPT_PACK.pack(10, 6_000, 42, 44, b"server\0x", 3, -1, 11, 0, 0, bytes(16), 0)
        + ACCEPT_PACK.pack(20, 7_000, 43, 45, b"srv2", 4, 9, 0, 2, 40002, V4_LOOP, 200),
    )
    raw, dicts, ties = _both(body)
    assert ties == [1, 2, 0]
    assert raw.to_dicts() == dicts.to_dicts()
    assert raw["peer_addr"].to_list() == ["", "127.0.0.1", "::1"]
    assert raw["fd"].to_list() == [-1, 9, 7]
    assert raw["errno"].to_list() == [11, 0, 0]
    assert raw["syscall"].to_list()[1] == "200"


def test_raw_epoll_records_give_their_dicts_columns() -> None:
    body = make_body(
        "epoll",
        EPOLL,
        EPOLL_PACK.pack(9, 200_000_000, 50, 51, b"mux", 4, 16, -1, 3, 0, 2)
        + EPOLL_PACK.pack(8, 1_000, 50, 52, b"mux", 4, 16, 0, 0, 4, 0),
    )
    raw, dicts, ties = _both(body)
    assert ties == [1, 0]
    assert raw.to_dicts() == dicts.to_dicts()
    assert raw["comm"].to_list() == ["mux", "mux"]
    assert raw["errno"].to_list() == [4, 0]
    assert raw["timeout_ms"].to_list() == [0, -1]


def _tcp(ts: int, comm: bytes, family: int, saddr: bytes, old: str, new: str) -> bytes:
    return TCP_STATE_PACK.pack(
        ts, 0xFFFF0000 + ts, 7, 8, comm, family, 40000, 8080,
        TCP_STATES.index(old), TCP_STATES.index(new), saddr, V4_LOOP,
    )  # fmt: skip


def _batches(bodies: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
    """tcp_state bodies as raw batches and as the dict batches of their events."""
    cols = Columns({})
    raw = [b for body in bodies for b in cols.raw(body)]
    cols = Columns({})
    dicts = [
        b
        for body in bodies
        for b in cols.kernel({"probe": "tcp_state", "events": batch_events(body)})
    ]
    return raw, dicts


def test_a_chunk_of_raw_batches_is_the_frame_of_their_dicts_in_position_order() -> None:
    """Raw batches decoded together (chunk_frame) give the rows their dicts
    give, each with its position: IPv4 with bytes after the address (only
    its first 4 count), IPv6, an unknown family, names with bytes after the NUL."""
    junk_v4 = V4_LOOP[:4] + b"\x99" * 12
    bodies = [
        make_body(
            "tcp_state",
            TCP_STATE,
            _tcp(30, b"bomber", 2, V4_LOOP, "CLOSE", "SYN_SENT")
            + _tcp(10, b"bomber\0zz", 10, V6_LOOP, "SYN_SENT", "ESTABLISHED"),
        ),
        make_body(
            "tcp_state",
            TCP_STATE,
            _tcp(20, b"swapper/0", 2, junk_v4, "ESTABLISHED", "FIN_WAIT1")
            + _tcp(40, b"x", 99, V6_LOOP, "FIN_WAIT1", "CLOSE"),
        ),
    ]
    raw, dicts = _batches(bodies)
    # Positions as a chunk gives them: the second batch's rows first, the
    # first batch's second row (lo=1) left out.
    pos = [np.array([5], np.int64), np.array([2, 3], np.int64)]
    got = chunk_frame([(raw[0], 1, 2, pos[0]), (raw[1], 0, 2, pos[1])])
    want = chunk_frame([(dicts[0], 1, 2, pos[0]), (dicts[1], 0, 2, pos[1])])
    assert got.to_dicts() == want.to_dicts()
    assert got.schema == want.schema
    assert got["pos"].to_list() == [2, 3, 5]
    assert got["saddr"].to_list() == ["127.0.0.1", "", "127.0.0.1"]
    assert got["cpu_comm"].to_list() == ["swapper/0", "x", "bomber"]
    assert got["old"].to_list() == ["ESTABLISHED", "FIN_WAIT1", "CLOSE"]
    # The first batch's first row in time (ts 10) is its IPv6 one.
    assert raw[0].data["saddr"].to_list() == ["::1", "127.0.0.1"]


def test_a_chunk_mixing_layouts_and_dict_batches_gives_the_same_frame() -> None:
    """Batches that cannot be decoded together (another layout of the same
    struct, a batch of dicts from an older recording) are decoded one by one:
    the chunk's frame is still the dicts' frame."""
    wide = make_layout(
        [*TCP_STATE["names"], "spare"],
        [*TCP_STATE["formats"], "<u8"],
        [*TCP_STATE["offsets"], 80],
        88,
    )
    recs = [
        _tcp(10, b"a", 2, V4_LOOP, "CLOSE", "SYN_SENT"),
        _tcp(20, b"b", 10, V6_LOOP, "SYN_SENT", "ESTABLISHED"),
        _tcp(30, b"c", 2, V4_LOOP, "ESTABLISHED", "CLOSE_WAIT"),
    ]
    bodies = [
        make_body("tcp_state", TCP_STATE, recs[0]),
        make_body("tcp_state", wide, recs[1] + bytes(8)),
        make_body("tcp_state", TCP_STATE, recs[2]),
    ]
    raw, dicts = _batches(bodies)
    pos = [np.array([i], np.int64) for i in (2, 0, 1)]
    mixed = [raw[0], raw[1], dicts[2]]
    got = chunk_frame([(b, 0, 1, p) for b, p in zip(mixed, pos, strict=True)])
    want = chunk_frame([(b, 0, 1, p) for b, p in zip(dicts, pos, strict=True)])
    assert got.to_dicts() == want.to_dicts()
    assert got["saddr"].to_list() == ["::1", "127.0.0.1", "127.0.0.1"]
    assert got["new"].to_list() == ["ESTABLISHED", "CLOSE_WAIT", "SYN_SENT"]
