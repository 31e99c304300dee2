"""What the correlator's rewrite as tables could cost: a sketch, not the product.

    .venv/bin/python bench/correlator_sketch.py RUN_DIR [ROUNDS]
    .venv/bin/python bench/correlator_sketch.py --carry RUN_DIR

The common path of the owners' fold (correlator/joins.py) as columns over a
whole recording at once: lives by a group-by on skaddr, app records joined
to lives by an as-of join on the 4-tuple, accept4 calls by one on the peer,
the first owner fact per life, outcomes as when/then. It follows the rules
only for plain connect/accept/close lives (no lost closes, parked closers,
failed connects, fd reuse or listener guesses) and checks nothing against
the engine: its figures say what such steps cost in polars on a recording's
real shape (docs/report.md, issue 11), not that they give the same outputs.
Prints CPU seconds per round: decoding the batches into frames (the
engine's own `Columns`), concatenating them, the column steps, and turning
the lifecycles into dicts (what today's sinks take).

--carry: live sockets as a table instead: the recording streamed in chunks
of 20k transitions, each concatenated with the transitions of the lives
still open (carried as a frame), lives numbered across chunks, finished ones
leaving the frame. Prints the carried frame's largest size, the RSS growth
and the CPU seconds (the carried rows are worked again every chunk: the
real design would carry one row per open life).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bus.schema import Kind  # noqa: E402
from correlator.columns import Batch, Columns, chunk_frame  # noqa: E402
from correlator.recording import RecordingReader  # noqa: E402

_APP = {
    "mono_ns": pl.Int64,
    "event": pl.String,
    "actor": pl.String,
    "pid": pl.Int64,
    "fd": pl.Int64,
    "laddr": pl.String,
    "lport": pl.Int64,
    "raddr": pl.String,
    "rport": pl.Int64,
}
_TUPLE = ["laddr", "lport", "raddr", "rport"]


def lives_of(tcp: pl.DataFrame) -> pl.DataFrame:
    """One row per life: a new one at a socket's first transition or after its CLOSE."""
    t = tcp.with_columns(prev=pl.col("new").shift(1).over("skaddr"))
    t = t.with_columns(start=pl.col("prev").is_null() | (pl.col("prev") == "CLOSE"))
    t = t.with_columns(gid=pl.col("start").cum_sum())
    t = t.with_columns(life=pl.when("start").then(pl.col("gid")).forward_fill().over("skaddr"))
    both = (pl.col("sport") != 0) & (pl.col("dport") != 0)
    return (
        t.group_by("life")
        .agg(
            start_ns=pl.col("ts").first(),
            first_old=pl.col("old").first(),
            first_new=pl.col("new").first(),
            cpu=pl.col("cpu_pid").first(),
            last_old=pl.col("old").last(),
            state=pl.col("new").last(),
            end_ns=pl.col("ts").filter(pl.col("new") == "CLOSE").first(),
            laddr=pl.col("saddr").filter(both).first(),
            lport=pl.col("sport").filter(both).first(),
            raddr=pl.col("daddr").filter(both).first(),
            rport=pl.col("dport").filter(both).first(),
            learn_ts=pl.col("ts").filter(both).first(),
            states=pl.struct("ts", "new", "cpu_pid").head(24),
        )
        .with_columns(
            role=pl.when(pl.col("first_new") == "LISTEN")
            .then(pl.lit("listener"))
            .when(pl.col("first_new") == "SYN_SENT")
            .then(pl.lit("active"))
            .when(pl.col("first_old").is_in(["LISTEN", "SYN_RECV"]))
            .then(pl.lit("passive"))
            .otherwise(pl.lit("unknown"))
        )
    )


def owners(lives: pl.DataFrame, acc: pl.DataFrame, app: pl.DataFrame) -> pl.DataFrame:
    """Lives with their first owner fact, flags and outcome."""
    by_tuple = (
        lives.filter(pl.col("lport").is_not_null())
        .select("life", *_TUPLE, "learn_ts", "role")
        .sort("learn_ts")
    )
    recs = app.filter(pl.col("rport").is_not_null()).join_asof(
        by_tuple.drop("role"),
        left_on="mono_ns",
        right_on="learn_ts",
        by=_TUPLE,
        check_sortedness=False,  # both sorted by time above
    )
    passive = by_tuple.filter(pl.col("role") == "passive").select(
        "life", "raddr", "rport", "learn_ts"
    )
    accepts = acc.rename({"peer_addr": "raddr", "peer_port": "rport"}).join_asof(
        passive, left_on="ts", right_on="learn_ts", by=["raddr", "rport"], check_sortedness=False
    )
    facts = (
        pl.concat(
            [
                accepts.select("life", "ts", "pid", "fd", via=pl.lit("accept4")),
                recs.select(
                    "life",
                    pl.col("mono_ns").alias("ts"),
                    "pid",
                    "fd",
                    via=pl.concat_str(pl.lit("app:"), "event"),
                ),
            ]
        )
        .filter(pl.col("life").is_not_null())
        .sort("ts")
    )
    own = facts.group_by("life").agg(
        o_pid=pl.col("pid").first(),
        o_fd=pl.col("fd").drop_nulls().first(),
        o_via=pl.col("via").first(),
        accepted=(pl.col("via") == "accept4").any(),
        app_closed=(pl.col("via") == "app:close").any(),
        actions=pl.struct("ts", "via").head(16),
    )
    accepted = pl.col("accepted").fill_null(False)
    return (
        lives.join(own, on="life", how="left")
        .with_columns(
            o_pid=pl.coalesce("o_pid", pl.when(pl.col("first_old") == "CLOSE").then(pl.col("cpu")))
        )
        .with_columns(
            outcome=pl.when(pl.col("end_ns").is_null())
            .then(pl.lit("open_at_end"))
            .when((pl.col("role") == "passive") & ~accepted)
            .then(pl.lit("never_accepted"))
            .when(pl.col("last_old") == "SYN_SENT")
            .then(pl.lit("refused"))
            .when(pl.col("last_old").is_in(["FIN_WAIT2", "CLOSING", "TIME_WAIT"]))
            .then(pl.lit("time_wait"))
            .when(pl.col("last_old") == "LAST_ACK")
            .then(pl.lit("clean"))
            .otherwise(pl.lit("reset"))
        )
    )


def frames(batches: list[Batch]) -> list[pl.DataFrame]:
    """Raw batches decoded together (columns.chunk_frame), numbered in order."""
    parts = []
    n = 0
    for b in batches:
        k = len(b.ts)
        parts.append((b, 0, k, np.arange(n, n + k)))
        n += k
    return [chunk_frame(parts)] if parts else []


def one_round(envs: list[Any]) -> tuple[float, float, float, float, list[Any]]:
    start = time.process_time()
    cols = Columns({})
    tcp: list[pl.DataFrame] = []
    acc: list[pl.DataFrame] = []
    recs: list[dict[str, Any]] = []
    raw: list[Batch] = []
    for e in envs:
        if e.kind is Kind.KERNEL_RAW:
            raw += cols.raw(e.body)
        elif e.kind is Kind.KERNEL:
            batches = cols.kernel(e.body)
            tcp += [b.data for b in batches if b.kind == "tcp_state"]
            acc += [b.data for b in batches if b.kind == "accept"]
        elif e.kind is Kind.LOG:
            recs += e.body["records"]
    tcp += frames([b for b in raw if b.kind == "tcp_state"])
    acc += frames([b for b in raw if b.kind == "accept"])
    decoded = time.process_time()
    t = pl.concat(tcp).sort("ts", "tie")
    a = pl.concat(acc).sort("ts")
    app = pl.from_dicts(recs, schema=_APP).sort("mono_ns")
    framed = time.process_time()
    out = owners(lives_of(t), a, app)
    stepped = time.process_time()
    out.to_dicts()
    done = time.process_time()
    counts = out["outcome"].value_counts().sort("outcome").rows()
    return decoded - start, framed - decoded, stepped - framed, done - stepped, counts


_CARRIED = {
    "ts": pl.Int64,
    "skaddr": pl.UInt64,
    "old": pl.String,
    "new": pl.String,
    "cpu_pid": pl.Int64,
    "saddr": pl.String,
    "sport": pl.Int64,
    "daddr": pl.String,
    "dport": pl.Int64,
}
CHUNK = 20_000


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Carried:
    """Open lives' transitions as one frame, carried from chunk to chunk."""

    def __init__(self) -> None:
        self.frame = pl.DataFrame(schema={**_CARRIED, "life": pl.Int64})
        self.next_id = 1
        self.finished = 0
        self.largest = 0

    def chunk(self, parts: list[pl.DataFrame]) -> None:
        new = pl.concat(parts).select(list(_CARRIED)).sort("ts")
        t = pl.concat([self.frame, new.with_columns(life=pl.lit(None, pl.Int64))])
        t = t.with_columns(prev=pl.col("new").shift(1).over("skaddr"))
        opens = pl.col("life").is_null() & (pl.col("prev").is_null() | (pl.col("prev") == "CLOSE"))
        t = t.with_columns(opens=opens, gid=opens.cum_sum() + self.next_id - 1)
        t = t.with_columns(
            life=pl.coalesce("life", pl.when("opens").then("gid")).forward_fill().over("skaddr")
        )
        self.next_id += int(t["opens"].sum())
        closed = t.filter(pl.col("new") == "CLOSE")["life"].unique().implode()
        self.finished += t.filter(pl.col("life").is_in(closed))["life"].n_unique()
        self.frame = t.filter(~pl.col("life").is_in(closed)).select(*_CARRIED, "life").rechunk()
        self.largest = max(self.largest, int(self.frame.estimated_size()))


def carry(run_dir: Path) -> None:
    base = peak_rss_mb()
    start = time.process_time()
    cols = Columns({})
    state = Carried()
    parts: list[pl.DataFrame] = []
    rows = 0
    for e in RecordingReader(run_dir / "recording.msgpack"):
        if e.kind is Kind.KERNEL_RAW:
            parts += frames([b for b in cols.raw(e.body) if b.kind == "tcp_state"])
            rows = sum(len(p) for p in parts)
        if rows >= CHUNK:
            state.chunk(parts)
            parts, rows = [], 0
    if parts:
        state.chunk(parts)
    print(
        f"lives finished {state.finished}, carried frame at most {state.largest / 1e6:.1f} MB, "
        f"RSS growth {peak_rss_mb() - base:.0f} MB, CPU {time.process_time() - start:.1f} s"
    )


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit("usage: bench/correlator_sketch.py [--carry] RUN_DIR [ROUNDS]")
    if sys.argv[1] == "--carry":
        carry(Path(sys.argv[2]))
        return
    envs = list(RecordingReader(Path(sys.argv[1]) / "recording.msgpack"))
    for _ in range(int(sys.argv[2]) if len(sys.argv) > 2 else 3):
        dec, fr, steps, dicts, counts = one_round(envs)
        print(
            f"decode {dec:.3f} s  concat {fr:.3f} s  column steps {steps:.3f} s  "
            f"lifecycles to dicts {dicts:.3f} s  outcomes {counts}"
        )


if __name__ == "__main__":
    main()
