"""events.jsonl as the sink writes it from a chunk of rows (kernel rows as
frames encoded by polars, app rows as dicts): every line is what json
writes for the row, and the lines come in position order across kinds."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from correlator.rows import RowsChunk
from reports.writers import RunSink, TraceWriter

_OWNER = pl.Struct({"actor": pl.String, "pid": pl.Int64, "fd": pl.Int64, "via": pl.String})


def _tcp_rows() -> pl.DataFrame:
    owner = {"actor": "server", "pid": 100, "fd": 4, "via": "accept4"}
    return pl.DataFrame(
        {
            "pos": [0, 3, 5],
            "ts": [1_000, 2_000, 3_000],
            "src": ["kernel"] * 3,
            "type": ["tcp_state"] * 3,
            "conn": [1, None, 2],
            "old": ["CLOSE", "SYN_SENT", "LISTEN"],
            "new": ["SYN_SENT", "ESTABLISHED", "SYN_RECV"],
            "skaddr": [1 << 63, 17, 18],
            "saddr": ["127.0.0.1", "::1", "127.0.0.1"],
            "sport": [0, 40000, 8080],
            "daddr": ["127.0.0.1", "::1", "127.0.0.1"],
            "dport": [8080, 8080, 40000],
            "cpu_pid": [200, 0, 100],
            # Non-ASCII (json escapes it) and a time json writes with an exponent.
            "cpu_comm": ["client", "sérveur", "server"],
            "t": [0.25, 1e-05, 2.5],
            "phase": ["bomb", None, "bomb"],
            "owner": [owner, None, owner],
            "cpu_is_owner": [False, False, True],
        },
        schema_overrides={"skaddr": pl.UInt64, "owner": _OWNER},
    )


def test_lines_are_json_rows_in_position_order(tmp_path: Path) -> None:
    app = [
        (1, {"ts": 1_500, "src": "app", "type": "connect", "conn": 1, "fd": 3, "t": 0.5}),
        (4, {"ts": 2_500, "src": "app", "type": "note", "conn": None, "text": "ça", "t": 1.5}),
    ]
    accept = pl.DataFrame(
        {
            "pos": [2],
            "ts": [1_800],
            "src": ["kernel"],
            "type": ["accept"],
            "conn": [2],
            "pid": [100],
            "actor": ["server"],
            "tid": [100],
            "syscall": ["accept4"],
            "lfd": [3],
            "fd": [4],
            "error": [None],
            "peer_addr": ["127.0.0.1"],
            "peer_port": [40000],
            "dur_ns": [700],
            "t": [0.8],
            "phase": ["bomb"],
        },
        schema_overrides={"error": pl.String},
    )
    chunk = RowsChunk(kernel={"tcp_state": _tcp_rows(), "accept": accept}, app=app)
    sink = RunSink(tmp_path, TraceWriter(tmp_path / "trace.json", 0))
    sink.rows(chunk)
    sink.close(complete=False)
    expected = [json.dumps(row, separators=(",", ":")) for row in chunk.dicts()]
    got = (tmp_path / "events.jsonl").read_text().splitlines()
    assert len(got) == 6 == sink.n_events
    assert expected == got
    assert [json.loads(line)["ts"] for line in got] == [1_000, 1_500, 1_800, 2_000, 2_500, 3_000]
    assert '"cpu_comm":"s\\u00e9rveur"' in got[3] and '"t":1e-05' in got[3]


def test_plain_rows_are_json_rows_too(tmp_path: Path) -> None:
    """Nothing in the chunk for json to write otherwise (the text is taken
    as polars wrote it, unchecked line by line)."""
    tcp = _tcp_rows().filter(pl.col("pos") != 3)
    app = [(1, {"ts": 1_500, "src": "app", "type": "connect", "conn": 1, "wall": 2.25, "t": 0.5})]
    chunk = RowsChunk(kernel={"tcp_state": tcp}, app=app)
    sink = RunSink(tmp_path, TraceWriter(tmp_path / "trace.json", 0))
    sink.rows(chunk)
    sink.close(complete=False)
    expected = [json.dumps(row, separators=(",", ":")) for row in chunk.dicts()]
    assert expected == (tmp_path / "events.jsonl").read_text().splitlines()
    assert len(expected) == 3
