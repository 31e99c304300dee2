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

import polars as pl

from correlator.lifecycles import Conn, bit_length
from correlator.phases import Phases
from correlator.stats import Log2Histogram

# States after which the kernel's ->CLOSE means a timewait socket took over.
_TIME_WAIT_FROM = ["FIN_WAIT2", "CLOSING", "TIME_WAIT"]
# A closer whose peer ended so sat in FIN_WAIT2 until the run's end.
_PEER_HELD = ["stuck_close_wait", "never_accepted"]


def _decide() -> pl.Expr:
    """joins.py's old decision list, first match wins."""
    role, last, error = pl.col("role"), pl.col("last_old"), pl.col("error")
    at_end = ~pl.col("closed_in_run")
    held = pl.when(at_end).then(pl.col("last_state")).otherwise(pl.col("stuck_in"))
    # An owner that closed the socket without having read the peer's FIN (a
    # close record, no peer_close) was behind, not keeping it: its CLOSE_WAIT
    # is not stuck however the end fell. No records (a foreign program): the
    # end decides. FIN_WAIT2 waits for the peer: its owner's close says nothing.
    unread = pl.col("app_closed") & ~pl.col("fin_read")
    stuck = pl.when((held == "CLOSE_WAIT") & unread).then(pl.lit(None, pl.String)).otherwise(held)
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
        .when(at_end)
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


def decide(
    f: pl.DataFrame, conns: list[Conn], tallies: Tallies, phases: Phases, counts: dict[str, int]
) -> pl.DataFrame:
    """`f` (lifecycle_rows.LifeRows.table) with each connection's outcome and
    timewait_from; `conns` its connections in row order take their outcome;
    the tallies."""
    f = f.with_columns(i=pl.int_range(pl.len(), dtype=pl.Int64))
    g = f.filter(pl.col("kind") == "connection").with_columns(out=_decide())
    if g["peer"].is_not_null().any():
        # A parked closer's peer finished in this same flush, just before it.
        decided = g.select(peer="id", peer_decided="out")
        g = (
            g.join(decided, on="peer", how="left", maintain_order="left")
            .with_columns(peer_outcome=pl.coalesce("peer_outcome", "peer_decided"))
            .with_columns(out=_decide())
        )
    for conn, o in zip(conns, g["out"].to_list(), strict=True):
        conn.outcome = o
    if len(g):
        _tally(g, conns, tallies, phases, counts)
    timewait = pl.col("out").is_in(["time_wait", "stuck_fin_wait2"]) & pl.col("close_seen")
    g = g.select("i", "out", tw_from=pl.when(timewait).then(pl.col("last_old")))
    return (
        f.join(g, on="i", how="left", maintain_order="left")
        .with_columns(
            outcome=pl.coalesce("out", "outcome"),
            timewait_from=pl.coalesce("tw_from", "timewait_from"),
        )
        .drop("out", "tw_from", "i")
    )


def _tally(
    f: pl.DataFrame, conns: list[Conn], t: Tallies, phases: Phases, counts: dict[str, int]
) -> None:
    for o, n in f.group_by("out", maintain_order=True).len().iter_rows():
        t.outcomes[o] = t.outcomes.get(o, 0) + n
    per_phase = f.filter(pl.col("phase").is_not_null())
    for ph, o, n in per_phase.group_by("phase", "out", maintain_order=True).len().iter_rows():
        phases.count_in(ph, f"outcomes.{o}", n)
    o_actor, o_pid = pl.col("owner_actor"), pl.col("owner_pid")
    actor = pl.when(o_actor.is_null() | (o_actor == "")).then(pl.lit("?"))
    pid = pl.when(o_pid.is_null() | (o_pid == 0)).then(pl.lit(-1))
    own = (
        f.with_columns(actor=actor.otherwise(o_actor), pid=pid.otherwise(o_pid))
        .group_by("out", "actor", "pid", "role", maintain_order=True)
        .len()
    )
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
        t.lifetimes.setdefault(o, Log2Histogram()).add_bucket(b, n, total, mx)
    # The rare ones, one by one: leaked pairs and connects that got no port.
    rare = f.with_columns(k=pl.int_range(pl.len())).filter(
        pl.col("out").is_in(["stuck_close_wait", "stuck_fin_wait2"])
        | ((pl.col("out") == "failed_connect") & ~pl.col("has_tuple"))
    )
    for i, o, err, start in rare.select("k", "out", "error", "start_ns").iter_rows():
        tup = conns[i].learn
        if o == "stuck_close_wait" and tup is not None:
            t.stuck_cw.add((tup[2], tup[3], tup[0], tup[1]))
        elif o == "stuck_fin_wait2" and tup is not None:
            t.stuck_fw2.add(tup)
        elif o == "failed_connect" and err in (None, "EADDRNOTAVAIL"):
            # No source port was ever chosen: inet_hash_connect found none.
            t.no_port_failures += 1
            phases.count(start, "kernel_errors.EADDRNOTAVAIL")
    counts["coverage.kernel_connections"] = counts.get("coverage.kernel_connections", 0) + len(f)
    owned = int(f["owner_pid"].is_not_null().sum())
    if owned:
        name = "coverage.kernel_connections_owned"
        counts[name] = counts.get(name, 0) + owned
