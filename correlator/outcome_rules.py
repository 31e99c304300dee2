"""How the connections finished since the last flush ended, decided as columns.

The fold (joins.py) finishes a connection when its grace runs out and takes
a snapshot then of what its outcome depends on; this module decides all the
outcomes of a chunk at once, as a when/then over those columns, and tallies
them (outcomes, per owner, per phase, lifetimes, coverage) by group-by. A
closer parked on its peer (lifecycles.Conn) is decided after the peer: the
peer's outcome is taken from an earlier flush or from this one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

from correlator.lifecycle_rows import LifeRows
from correlator.lifecycles import Conn, bit_length
from correlator.phases import Phases
from correlator.stats import Log2Histogram

# States after which the kernel's ->CLOSE means a timewait socket took over.
_TIME_WAIT_FROM = ["FIN_WAIT2", "CLOSING", "TIME_WAIT"]
# A closer whose peer ended so sat in FIN_WAIT2 until the run's end.
_PEER_HELD = ["stuck_close_wait", "never_accepted"]
_SCHEMA = {
    "role": pl.String,
    "accepted": pl.Boolean,
    "seen": pl.Boolean,
    "close_seen": pl.Boolean,
    "at_end": pl.Boolean,
    "state": pl.String,
    "stuck_in": pl.String,
    "last_old": pl.String,
    "peer_outcome": pl.String,
    "peer": pl.Int64,  # the peer's id while its outcome is still to decide
    "error": pl.String,
    "has_tuple": pl.Boolean,
    "phase": pl.String,
    "actor": pl.String,
    "pid": pl.Int64,
    "owned": pl.Boolean,
    "start_ns": pl.Int64,
    "life_ns": pl.Int64,
}


def _decide() -> pl.Expr:
    """joins.py's old decision list, first match wins."""
    role, last, error = pl.col("role"), pl.col("last_old"), pl.col("error")
    stuck = pl.when(pl.col("at_end")).then(pl.col("state")).otherwise(pl.col("stuck_in"))
    syn_sent = (
        pl.when(error == "ECONNREFUSED")
        .then(pl.lit("refused"))
        .when(error.is_not_null() | ~pl.col("has_tuple"))
        .then(pl.lit("failed_connect"))
        .otherwise(pl.lit("refused"))
    )
    return (
        pl.when((role == "passive") & ~pl.col("accepted") & pl.col("seen"))
        .then(pl.lit("never_accepted"))
        .when(~pl.col("close_seen"))
        .then(pl.lit("unknown"))
        .when(stuck == "CLOSE_WAIT")
        .then(pl.lit("stuck_close_wait"))
        .when(stuck == "FIN_WAIT2")
        .then(pl.lit("stuck_fin_wait2"))
        .when(pl.col("at_end"))
        .then(pl.lit("open_at_end"))
        .when(pl.col("peer_outcome").is_in(_PEER_HELD))
        .then(pl.lit("stuck_fin_wait2"))
        .when(last == "SYN_SENT")
        .then(syn_sent)
        .when(last.is_in(_TIME_WAIT_FROM))
        .then(pl.lit("time_wait"))
        .when(last == "LAST_ACK")
        .then(pl.lit("clean"))
        .otherwise(pl.lit("reset"))
    )


@dataclass
class Tallies:
    """What the outcomes add up to over the run."""

    outcomes: dict[str, int] = field(default_factory=dict)
    outcome_owner: dict[tuple[str, str, int, str], int] = field(default_factory=dict)
    lifetimes: dict[str, Log2Histogram] = field(default_factory=dict)
    stuck_cw: set[tuple[str, int, str, int]] = field(default_factory=set)
    stuck_fw2: set[tuple[str, int, str, int]] = field(default_factory=set)
    no_port_failures: int = 0


@dataclass
class Ending:
    """Lives finished and not yet decided, in the order they finished: all
    their rows (listeners' too, so the rows leave in that order), and the
    connections with their rows' indexes and the columns of the decision."""

    rows: LifeRows = field(default_factory=LifeRows)
    conns: list[Conn] = field(default_factory=list)
    conn_rows: list[int] = field(default_factory=list)
    cols: dict[str, list[Any]] = field(default_factory=lambda: {k: [] for k in _SCHEMA})

    def add(
        self, conn: Conn, row: int, phase: str | None, at_end: bool, seen: bool, life_ns: int
    ) -> None:
        c = self.cols
        peer = conn.peer_wait
        c["role"].append(conn.role)
        c["accepted"].append(conn.accepted)
        c["seen"].append(seen)
        c["close_seen"].append(conn.close_seen)
        c["at_end"].append(at_end)
        c["state"].append(conn.state)
        c["stuck_in"].append(conn.stuck_in)
        c["last_old"].append(conn.last_old)
        c["peer_outcome"].append(peer.outcome if peer is not None else None)
        c["peer"].append(peer.id if peer is not None and peer.outcome is None else None)
        c["error"].append(conn.error)
        c["has_tuple"].append(conn.addr4 is not None)
        c["phase"].append(phase)
        c["actor"].append(conn.owner_actor or "?")
        c["pid"].append(conn.owner_pid or -1)
        c["owned"].append(conn.owner_pid is not None)
        c["start_ns"].append(conn.start_ns)
        c["life_ns"].append(life_ns)
        self.conns.append(conn)
        self.conn_rows.append(row)


def decide(ending: Ending, tallies: Tallies, phases: Phases, counts: dict[str, int]) -> None:
    """Each finished connection's outcome into its row and its Conn; the tallies."""
    if not ending.conns:
        return
    f = pl.DataFrame(ending.cols, schema=_SCHEMA).with_columns(
        i=pl.int_range(pl.len(), dtype=pl.Int64), id=pl.Series([c.id for c in ending.conns])
    )
    f = f.with_columns(out=_decide())
    if f["peer"].is_not_null().any():
        # A parked closer's peer finished in this same flush, just before it.
        decided = f.select(peer="id", peer_decided="out")
        f = (
            f.join(decided, on="peer", how="left", maintain_order="left")
            .with_columns(peer_outcome=pl.coalesce("peer_outcome", "peer_decided"))
            .with_columns(out=_decide())
        )
    out = f["out"].to_list()
    for conn, row, o in zip(ending.conns, ending.conn_rows, out, strict=True):
        conn.outcome = o
        tw = o in ("time_wait", "stuck_fin_wait2") and conn.close_seen
        ending.rows.decided(row, o, conn.last_old if tw else None)
    _tally(f, ending.conns, tallies, phases, counts)


def _tally(
    f: pl.DataFrame, conns: list[Conn], t: Tallies, phases: Phases, counts: dict[str, int]
) -> None:
    for o, n in f.group_by("out", maintain_order=True).len().iter_rows():
        t.outcomes[o] = t.outcomes.get(o, 0) + n
    per_phase = f.filter(pl.col("phase").is_not_null())
    for ph, o, n in per_phase.group_by("phase", "out", maintain_order=True).len().iter_rows():
        phases.count_in(ph, f"outcomes.{o}", n)
    own = f.group_by("out", "actor", "pid", "role", maintain_order=True).len()
    for o, actor, pid, role, n in own.iter_rows():
        key = (o, actor, pid, role)
        t.outcome_owner[key] = t.outcome_owner.get(key, 0) + n
    life = f["life_ns"].to_numpy()
    hist = (
        f.select("out", "life_ns")
        .with_columns(b=pl.Series(bit_length(life)))
        .group_by("out", "b", maintain_order=True)
        .agg(pl.len(), pl.col("life_ns").sum().alias("total"), pl.col("life_ns").max().alias("mx"))
    )
    for o, b, n, total, mx in hist.iter_rows():
        h = t.lifetimes.get(o)
        if h is None:
            h = t.lifetimes[o] = Log2Histogram()
        h.buckets[b] = h.buckets.get(b, 0) + n
        h.count += n
        h.total += total
        h.max = max(h.max, mx)
    # The rare ones, one by one: leaked pairs and connects that got no port.
    rare = f.filter(
        pl.col("out").is_in(["stuck_close_wait", "stuck_fin_wait2"])
        | ((pl.col("out") == "failed_connect") & ~pl.col("has_tuple"))
    )
    for i, o, err, start in rare.select("i", "out", "error", "start_ns").iter_rows():
        tup = conns[i].addr4
        if o == "stuck_close_wait" and tup is not None:
            t.stuck_cw.add((tup[2], tup[3], tup[0], tup[1]))
        elif o == "stuck_fin_wait2" and tup is not None:
            t.stuck_fw2.add(tup)
        elif o == "failed_connect" and err in (None, "EADDRNOTAVAIL"):
            # No source port was ever chosen: inet_hash_connect found none.
            t.no_port_failures += 1
            phases.count(start, "kernel_errors.EADDRNOTAVAIL")
    counts["coverage.kernel_connections"] = counts.get("coverage.kernel_connections", 0) + len(f)
    owned = int(f["owned"].sum())
    if owned:
        name = "coverage.kernel_connections_owned"
        counts[name] = counts.get(name, 0) + owned
