"""Correlator replay throughput and peak memory (figures printed, nothing asserted).

    .venv/bin/python bench/correlator_replay.py                 # 1k/10k/100k held + 1M events
    .venv/bin/python bench/correlator_replay.py --events 10000000  # the 10M-event case too
    .venv/bin/python bench/correlator_replay.py --raw              # kernel batches as raw records
    .venv/bin/python bench/correlator_replay.py --libraries 1000000,10000000
                                 # polars vs DuckDB on the correlator's steps (needs duckdb)

Each case writes a synthetic recording under bench/out/, then replays it in
a fresh process three times: reading only (decoding envelopes, raw records
as their numpy view: the floor the correlator is compared with), correlation
only (a sink that discards) and the full build_reports (events.jsonl,
connections.jsonl, trace.json, summary, HTML).
The child reports wall time and ru_maxrss; RSS after imports is the baseline,
so the growth is what the replay itself holds.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.synthetic import Actor, Lab, RecordingWriter, write_run_json  # noqa: E402

T0 = 10_000_000_000
US = 1_000
SERVER = Actor("server", 100)
STREAM_ITEMS_PER_CONNECTION = 16  # gen_stream: 10 state events, 1 accept4, 5 app records


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def gen_held(run_dir: Path, n: int) -> int:
    """n connections opened, all held open together, then all closed."""
    w = RecordingWriter(run_dir / "recording.msgpack")
    lab = Lab(w)
    lab.listen(T0, SERVER, 8080)
    pairs = []
    t = T0 + 1000 * US
    for i in range(n):
        # 50k ports per client address keeps every 4-tuple distinct.
        client = Actor("client", 200, f"127.0.{i // 50000}.{2 + (i // 50000) % 200}")
        pairs.append(lab.connect(t, client, SERVER, 10000 + i % 50000, 8080))
        t += 100 * US
    for p in pairs:
        lab.client_close(t, p)
        t += 100 * US
    w.close()
    write_run_json(
        run_dir,
        {
            "scenario": f"held-{n}",
            "started_mono_ns": T0,
            "ended_mono_ns": t,
            "actors": {"server": {"pid": 100}, "client": {"pid": 200}},
        },
    )
    return n


def gen_stream(run_dir: Path, events: int) -> int:
    """Sequential connect/close pairs until `events` kernel+app items are written."""
    w = RecordingWriter(run_dir / "recording.msgpack")
    lab = Lab(w)
    lab.listen(T0, SERVER, 8080)
    client = Actor("client", 200)
    t = T0 + 1000 * US
    n = events // STREAM_ITEMS_PER_CONNECTION
    for i in range(n):
        p = lab.connect(t, client, SERVER, 10000 + i % 50000, 8080)
        lab.client_close(t + 100 * US, p)
        t += 200 * US
    w.close()
    write_run_json(
        run_dir,
        {
            "scenario": f"stream-{events}",
            "started_mono_ns": T0,
            "ended_mono_ns": t,
            "actors": {"server": {"pid": 100}, "client": {"pid": 200}},
        },
    )
    return n


def gen_bomb(run_dir: Path, events: int) -> int:
    """A port bomb's shape: connect/close pairs with failed connects between
    them, the server's epoll wake-ups, observer samples and progress reports."""
    w = RecordingWriter(run_dir / "recording.msgpack")
    lab = Lab(w)
    lab.listen(T0, SERVER, 8080)
    bomber = Actor("bomber", 400)
    observer_at = stats_at = t = T0 + 1000 * US
    per_conn = 17  # 10 state events, accept4, epoll_wait, 5 app records
    n = events // per_conn
    attempts = failed = 0
    for i in range(n):
        p = lab.connect(t, bomber, SERVER, 10000 + i % 50000, 8080)
        lab.epoll_event(t + 35 * US, SERVER, SERVER.pid, 1 + i % 3)
        lab.client_close(t + 100 * US, p)
        attempts += 1
        if i % 4 == 3:
            # Three failures per four connects: no port left for a while.
            for k in range(3):
                lab.failed_connect(t + (200 + 10 * k) * US, bomber, ("127.0.0.1", 8080))
            failed += 3
            attempts += 3
        t += 300 * US
        if t >= observer_at:
            lab.observer(t, {"TIME_WAIT": min(i, 28000), "ESTABLISHED": 1}, {"100": 5})
            observer_at = t + 100_000 * US
        if t >= stats_at:
            body = {
                "source": "bomber",
                "attempts": attempts,
                "connected": i + 1,
                "failed": {"EADDRNOTAVAIL": failed},
                "per_s": 3333.3,
            }
            w.stats("actor:bomber", body, t)
            stats_at = t + 1_000_000 * US
    w.close()
    write_run_json(
        run_dir,
        {
            "scenario": f"bomb-{events}",
            "started_mono_ns": T0,
            "ended_mono_ns": t,
            "actors": {"server": {"pid": 100}, "bomber": {"pid": 400}},
            "phases": [{"name": "bomb", "start_mono_ns": T0, "end_mono_ns": t}],
        },
    )
    return n


def read_items(recording: Path) -> int:
    """Read a recording without correlating it: the items it holds (raw
    records counted from their numpy view, other bodies by their lists)."""
    from bus.rawbatch import decode_batch
    from bus.schema import Kind
    from correlator.recording import RecordingReader

    items = 0
    for env in RecordingReader(recording):
        if env.kind is Kind.KERNEL_RAW:
            items += len(decode_batch(env.body))
        else:
            items += len(env.body.get("events") or env.body.get("records") or [1])
    return items


class NullSink:
    def __init__(self) -> None:
        self.events = 0
        self.n_connections = 0

    def rows(self, chunk: Any) -> None:
        self.events += len(chunk)

    def connections(self, frame: Any) -> None:
        self.n_connections += len(frame)


def child(run_dir: Path, mode: str) -> None:
    """Runs in a fresh process: replay and print one JSON line of figures."""
    from correlator.correlate import Correlator
    from correlator.recording import RecordingReader, read_run_meta
    from reports.build import build_reports

    base = rss_mb()
    start = time.perf_counter()
    if mode == "read":
        items = read_items(run_dir / "recording.msgpack")
        extra = {"max_live": 0, "reorder_max_held": 0}
    elif mode == "correlate":
        sink = NullSink()
        corr = Correlator(sink, read_run_meta(run_dir))
        for env in RecordingReader(run_dir / "recording.msgpack"):
            corr.feed(env)
        result = corr.finish()
        items = sink.events
        extra = {"max_live": result.max_live, "reorder_max_held": result.reorder_max_held}
    else:
        summary = build_reports(run_dir)
        items = summary["outputs"]["events"]
        extra = {
            "max_live": summary["correlator"]["max_live_sockets"],
            "reorder_max_held": summary["correlator"]["reorder_max_held"],
        }
    secs = time.perf_counter() - start
    print(
        json.dumps(
            {
                "items": items,
                "seconds": round(secs, 2),
                "items_per_s": round(items / secs),
                "rss_base_mb": round(base, 1),
                "rss_peak_mb": round(rss_mb(), 1),
                **extra,
            }
        )
    )


def measure(run_dir: Path, mode: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(run_dir), mode],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise SystemExit(f"replay of {run_dir} ({mode}) failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# The structs of probes/events.h as numpy lays them out (what bcc's parsed
# class gives probes/layout.py): (name, format, offset) and the record size.
# The bench writes raw records with them.
_STRUCTS: dict[str, tuple[list[tuple[str, str, int]], int]] = {
    "tcp_state": (
        [("ts", "<u8", 0), ("skaddr", "<u8", 8), ("pid", "<u4", 16), ("tid", "<u4", 20),
         ("comm", "|S16", 24), ("family", "<u2", 40), ("sport", "<u2", 42),
         ("dport", "<u2", 44), ("oldstate", "|u1", 46), ("newstate", "|u1", 47),
         ("saddr", "(16,)|u1", 48), ("daddr", "(16,)|u1", 64)],
        80,
    ),
    "accept": (
        [("ts", "<u8", 0), ("dur_ns", "<u8", 8), ("pid", "<u4", 16), ("tid", "<u4", 20),
         ("comm", "|S16", 24), ("lfd", "<i4", 40), ("fd", "<i4", 44), ("err", "<i4", 48),
         ("family", "<u2", 52), ("peer_port", "<u2", 54), ("peer_addr", "(16,)|u1", 56),
         ("syscall", "|u1", 72), ("pad", "(7,)|u1", 73)],
        80,
    ),
    "epoll": (
        [("ts", "<u8", 0), ("dur_ns", "<u8", 8), ("pid", "<u4", 16), ("tid", "<u4", 20),
         ("comm", "|S16", 24), ("epfd", "<i4", 40), ("maxevents", "<i4", 44),
         ("timeout_ms", "<i4", 48), ("ready", "<i4", 52), ("err", "<i4", 56),
         ("syscall", "|u1", 60), ("pad", "(3,)|u1", 61)],
        64,
    ),
}  # fmt: skip
# Dict keys tests/synthetic.py leaves out, and the key whose value they take.
_SAME_AS = {"cpu_tid": "cpu_pid"}


def _address_image(text: str) -> bytes:
    if not text:
        return bytes(16)
    fam = socket.AF_INET6 if ":" in text else socket.AF_INET
    return socket.inet_pton(fam, text).ljust(16, b"\0")


def raw_records(probe: str, evs: list[dict[str, Any]]) -> dict[str, Any]:
    """A KERNEL_RAW body holding `evs` (bus/records.py dicts of one probe) as
    the ring holds them: each field filled as bus/rawbatch.py COLUMNS reads
    it back (its inverse: names and states to their codes, texts to bytes)."""
    import numpy as np

    from bus import rawbatch
    from bus.records import TCP_STATES

    fields, size = _STRUCTS[probe]
    names, formats, offsets = (list(x) for x in zip(*fields, strict=True))
    layout = rawbatch.make_layout(names, formats, offsets, size)
    r = np.zeros(len(evs), dtype=rawbatch.dtype_of(layout))
    for c in rawbatch.COLUMNS[probe]:
        key = c.key if c.key in evs[0] else _SAME_AS[c.key]
        values = [e[key] for e in evs]
        if c.how == "int":
            r[c.source] = values
        elif c.how == "text":
            r[c.source] = [v.encode() for v in values]
        elif c.how == "addr":
            r[c.source] = np.frombuffer(
                b"".join(_address_image(v) for v in values), np.uint8
            ).reshape(-1, 16)
        elif c.how in ("state", "name"):
            table = TCP_STATES if c.how == "state" else c.names
            r[c.source] = [table.index(v) for v in values]
        else:
            raise ValueError(f"{probe}.{c.key}: the bench writes no {c.how} column")
    return rawbatch.make_body(probe, layout, r.tobytes())


def to_raw(run_dir: Path) -> None:
    """Rewrite a synthetic recording's tcp_state, accept and epoll batches as
    raw ring records (KERNEL_RAW, bus/rawbatch.py), as the probe process ships them."""
    from bus.schema import Envelope, Kind, encode
    from correlator.recording import RecordingReader

    src = run_dir / "recording.msgpack"
    tmp = run_dir / "recording.raw"
    with open(tmp, "wb") as out:
        for env in RecordingReader(src):
            evs = env.body.get("events") if env.kind is Kind.KERNEL else None
            probe = evs[0].get("type") if evs else None
            if evs and probe in _STRUCTS and all(e.get("type") == probe for e in evs):
                body = raw_records(probe, evs)
                env = Envelope(Kind.KERNEL_RAW, env.sender, env.seq, env.mono_ns, body)
            out.write(encode(env))
    tmp.replace(src)


def library_child(n: int, lib: str) -> None:
    """The correlator's column steps on n synthetic transitions, in polars or
    DuckDB: sort by time, incarnations (previous state per skaddr, a new life
    after CLOSE, numbered by a running sum), a group-by per life, an as-of
    join of the transitions on (pid, fd, time) with owner facts."""
    import numpy as np

    nconn = n // 10
    conn = np.repeat(np.arange(nconn), 10)
    ts = (conn * 2000 + np.tile(np.arange(10) * 100, nconn)).astype(np.int64)
    sk = np.uint64(0xFFFF888100000000) + ((conn % 50000) * 2048).astype(np.uint64)
    new = np.tile(np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 0], dtype=np.uint8), nconn)
    old = np.roll(new, 1)
    pid = np.full(n, 100, np.int32)
    fd = (conn % 1000).astype(np.int32)
    facts = {"ts": ts[::10] + 50, "pid": pid[::10], "fd": fd[::10], "life": np.arange(nconn)}
    base = rss_mb()
    start = time.perf_counter()
    if lib == "polars":
        import polars as pl

        df = pl.DataFrame({"ts": ts, "sk": sk, "old": old, "new": new, "pid": pid, "fd": fd})
        df = df.sort("ts").with_columns(prev=pl.col("new").shift(1).over("sk"))
        df = df.with_columns(
            life=(pl.col("prev").is_null() | (pl.col("prev") == 0)).cast(pl.Int64).cum_sum()
        )
        lives = df.group_by("life").agg(pl.col("ts").first(), pl.col("ts").last().alias("end"))
        owners = pl.DataFrame(facts).sort("ts")
        joined = df.select("ts", "pid", "fd").join_asof(
            owners, on="ts", by=["pid", "fd"], check_sortedness=False
        )
        result = (len(lives), joined["life"].null_count())
    else:
        import duckdb

        con = duckdb.connect()
        con.register("ev", {"ts": ts, "sk": sk, "old": old, "new": new, "pid": pid, "fd": fd})
        con.register("facts", facts)
        con.execute(
            "CREATE TEMP TABLE e AS SELECT *, sum(CASE WHEN prev IS NULL OR prev = 0 THEN 1"
            " ELSE 0 END) OVER (ORDER BY ts ROWS UNBOUNDED PRECEDING) AS life FROM"
            " (SELECT *, lag(new) OVER (PARTITION BY sk ORDER BY ts) AS prev FROM ev)"
        )
        lives = con.execute("SELECT life, min(ts), max(ts) FROM e GROUP BY life").fetchall()
        (unowned,) = con.execute(
            "SELECT count(*) - count(o.life) FROM e ASOF LEFT JOIN facts o"
            " ON e.pid = o.pid AND e.fd = o.fd AND e.ts >= o.ts"
        ).fetchone() or (0,)
        result = (len(lives), unowned)
    secs = time.perf_counter() - start
    print(
        json.dumps(
            {
                "lib": lib,
                "n": n,
                "seconds": round(secs, 2),
                "lives": result[0],
                "rss_growth_mb": round(rss_mb() - base),
            }
        )
    )


def compare_libraries(sizes: list[int]) -> None:
    print(f"{'library':<10}{'transitions':>13}{'s':>8}{'lives':>10}{'rss growth':>12}")
    for n in sizes:
        for lib in ("polars", "duckdb"):
            out = subprocess.run(
                [sys.executable, __file__, "--child-lib", str(n), lib],
                capture_output=True,
                text=True,
            )
            if out.returncode:
                last = (out.stderr.strip().splitlines() or ["?"])[-1]
                print(f"{lib:<10}{n:>13}  failed: {last} (pip install duckdb to compare)")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{lib:<10}{n:>13}{r['seconds']:>8}{r['lives']:>10}{r['rss_growth_mb']:>10} MB")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--held", default="1000,10000,100000")
    ap.add_argument("--events", default="1000000")
    ap.add_argument("--bomb", default="300000", help="events of the port-bomb shape")
    ap.add_argument("--child", nargs=2, metavar=("RUN_DIR", "MODE"))
    ap.add_argument("--keep", action="store_true", help="keep bench/out/ recordings")
    ap.add_argument("--libraries", help="compare polars and DuckDB at these sizes")
    ap.add_argument(
        "--raw",
        action="store_true",
        help="tcp_state, accept, epoll batches as raw ring records",
    )
    ap.add_argument("--child-lib", nargs=2, metavar=("N", "LIB"))
    args = ap.parse_args()
    if args.child_lib:
        library_child(int(args.child_lib[0]), args.child_lib[1])
        return
    if args.libraries:
        compare_libraries([int(n) for n in args.libraries.split(",")])
        return
    if args.child:
        child(Path(args.child[0]), args.child[1])
        return
    out = ROOT / "bench" / "out" / "correlator"
    cases: list[tuple[str, Any, int]] = [
        ("held", gen_held, int(n)) for n in args.held.split(",") if n
    ]
    cases += [("stream", gen_stream, int(n)) for n in args.events.split(",") if n]
    cases += [("bomb", gen_bomb, int(n)) for n in args.bomb.split(",") if n]
    print(
        f"{'case':<18}{'mode':<11}{'items':>11}{'s':>8}{'items/s':>10}"
        f"{'rss base':>10}{'rss peak':>10}{'growth':>9}{'live max':>10}{'heap max':>10}"
    )
    for kind, gen, n in cases:
        run_dir = out / f"{kind}-{n}"
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        t = time.perf_counter()
        gen(run_dir, n)
        if args.raw:
            to_raw(run_dir)
        size = (run_dir / "recording.msgpack").stat().st_size / 1e6
        print(f"# {kind}-{n}: recording {size:.0f} MB written in {time.perf_counter() - t:.0f} s")
        for mode in ("read", "correlate", "full"):
            r = measure(run_dir, mode)
            print(
                f"{kind + '-' + str(n):<18}{mode:<11}{r['items']:>11}{r['seconds']:>8}"
                f"{r['items_per_s']:>10}{r['rss_base_mb']:>10}{r['rss_peak_mb']:>10}"
                f"{r['rss_peak_mb'] - r['rss_base_mb']:>9.1f}{r['max_live']:>10}"
                f"{r['reorder_max_held']:>10}",
                flush=True,
            )
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
