"""Kernel batches become the same columns whether they come as dicts (every
recording so far) or as raw ring records decoded by numpy (bus/rawbatch.py)."""

from __future__ import annotations

import ctypes
import gzip
import hashlib
import json
import shutil
import socket
from pathlib import Path

import polars as pl

from bus import rawbatch
from bus.records import TCP_STATES
from correlator.columns import Columns
from probes.layout import layout_of


class TcpStateRecord(ctypes.Structure):
    """struct tcp_state_event of probes/events.h, as bcc's parsed class has it
    (bcc itself is not needed to make records offline)."""

    _fields_ = [
        ("ts", ctypes.c_uint64),
        ("skaddr", ctypes.c_uint64),
        ("pid", ctypes.c_uint32),
        ("tid", ctypes.c_uint32),
        ("comm", ctypes.c_char * 16),
        ("family", ctypes.c_uint16),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("oldstate", ctypes.c_uint8),
        ("newstate", ctypes.c_uint8),
        ("saddr", ctypes.c_uint8 * 16),
        ("daddr", ctypes.c_uint8 * 16),
    ]


def _addr(family: int, text: str) -> ctypes.Array[ctypes.c_uint8]:
    raw = socket.inet_pton(family, text)
    return (ctypes.c_uint8 * 16)(*raw, *bytes(16 - len(raw)))


EVENTS = [
    # (ts, skaddr, pid, comm, family, saddr, sport, daddr, dport, old, new)
    (
        3_000,
        0xFFFF888100000800,
        0,
        "swapper/0",
        2,
        "127.0.0.1",
        8080,
        "127.0.0.1",
        40000,
        "LISTEN",
        "SYN_RECV",
    ),
    (
        1_000,
        0xFFFF888100001000,
        4242,
        "client",
        2,
        "127.0.0.1",
        0,
        "127.0.0.1",
        8080,
        "CLOSE",
        "SYN_SENT",
    ),
    (
        2_000,
        0xFFFF888100001000,
        4242,
        "client",
        10,
        "::1",
        40000,
        "::1",
        8080,
        "SYN_SENT",
        "ESTABLISHED",
    ),
]


def test_raw_records_and_dicts_give_the_same_columns() -> None:
    """Same values, same order (time, then arrival), whichever form they came in."""
    recs = (TcpStateRecord * len(EVENTS))()
    dicts = []
    for r, (ts, sk, pid, comm, fam, sa, sp, da, dp, old, new) in zip(recs, EVENTS, strict=True):
        r.ts, r.skaddr, r.pid, r.tid, r.comm = ts, sk, pid, pid, comm.encode()
        r.family, r.sport, r.dport = fam, sp, dp
        r.oldstate, r.newstate = TCP_STATES.index(old), TCP_STATES.index(new)
        r.saddr, r.daddr = _addr(fam, sa), _addr(fam, da)
        dicts.append(
            {
                "type": "tcp_state",
                "ts": ts,
                "skaddr": sk,
                "cpu_pid": pid,
                "cpu_tid": pid,
                "cpu_comm": comm,
                "family": fam,
                "saddr": sa,
                "sport": sp,
                "daddr": da,
                "dport": dp,
                "old": old,
                "new": new,
            }
        )
    body = rawbatch.make_body("tcp_state", layout_of(TcpStateRecord), bytes(recs))
    (raw,) = Columns({}).raw(body)
    (from_dicts,) = Columns({}).kernel({"probe": "tcp_state", "events": dicts})
    assert [1_000, 2_000, 3_000] == raw.ts.tolist() == from_dicts.ts.tolist()
    assert [1, 2, 0] == raw.tie.tolist() == from_dicts.tie.tolist()
    assert from_dicts.data.to_dicts() == raw.data.to_dicts()
    assert ["CLOSE", "SYN_SENT", "LISTEN"] == raw.data["old"].to_list()
    assert raw.data.schema == from_dicts.data.schema
    assert pl.UInt64 == raw.data.schema["skaddr"]


def test_a_recording_with_raw_records_correlates_as_its_dict_twin(tmp_path: Path) -> None:
    """The real echo run's golden recording, its tcp_state batches rewritten
    as raw ring records (as runs record them now): the same events.jsonl
    and connections as the golden, which the one-pass engine made from dicts."""
    import numpy as np

    from bus.schema import Envelope, Kind, encode
    from correlator.recording import RecordingReader
    from reports.build import build_reports

    golden = Path(__file__).parent / "data" / "golden" / "echo"
    run_dir = tmp_path / "echo"
    run_dir.mkdir()
    shutil.copy(golden / "run.json", run_dir / "run.json")
    dicts = tmp_path / "dicts.msgpack"
    with gzip.open(golden / "recording.msgpack.gz", "rb") as f, open(dicts, "wb") as out:
        shutil.copyfileobj(f, out)
    layout = layout_of(TcpStateRecord)
    dt = rawbatch.dtype_of(layout)
    converted = 0
    with open(run_dir / "recording.msgpack", "wb") as out:
        for env in RecordingReader(dicts):
            evs = env.body.get("events") if env.kind is Kind.KERNEL else None
            if evs and all(e["type"] == "tcp_state" for e in evs):
                recs = (TcpStateRecord * len(evs))()
                for r, e in zip(recs, evs, strict=True):
                    fam = e["family"]
                    r.ts, r.skaddr, r.pid, r.tid = e["ts"], e["skaddr"], e["cpu_pid"], e["cpu_tid"]
                    r.comm, r.family = e["cpu_comm"].encode(), fam
                    r.sport, r.dport = e["sport"], e["dport"]
                    r.oldstate = TCP_STATES.index(e["old"])
                    r.newstate = TCP_STATES.index(e["new"])
                    r.saddr, r.daddr = _addr(fam, e["saddr"]), _addr(fam, e["daddr"])
                assert len(np.frombuffer(bytes(recs), dtype=dt)) == len(evs)
                body = rawbatch.make_body("tcp_state", layout, bytes(recs))
                env = Envelope(Kind.KERNEL_RAW, env.sender, env.seq, env.mono_ns, body)
                converted += 1
            out.write(encode(env))
    assert converted > 0
    summary = build_reports(run_dir)
    want = json.loads((golden / "golden.json").read_text())
    digest = hashlib.sha256((run_dir / "events.jsonl").read_bytes()).hexdigest()
    assert want["events_jsonl_sha256"] == digest
    with gzip.open(golden / "connections.jsonl.gz", "rt") as f:
        conns = [json.loads(line) for line in f]
    got = sorted(
        (json.loads(line) for line in (run_dir / "connections.jsonl").open()),
        key=lambda c: c["id"],
    )
    assert conns == got
    assert want["counts"]["outcomes"] == summary["counts"]["outcomes"]
