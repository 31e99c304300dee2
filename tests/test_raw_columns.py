"""The correlator's columns straight from raw accept and epoll records
(correlator/columns.py) are the ones their dicts give (bus/rawconvert.py's
events, the path every earlier recording took): same values, same order."""

from __future__ import annotations

from typing import Any

import polars as pl

from bus.rawbatch import make_body
from bus.rawconvert import batch_events
from correlator.columns import Columns
from tests.test_rawbatch import ACCEPT, ACCEPT_PACK, EPOLL, EPOLL_PACK, V4_LOOP, V6_LOOP


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
