"""The finished lives as the frame the sinks take (connection_schema.py).

Each life's fields are taken when the joins finish it (later app records
must not change its row) as plain column lists; its kept transitions' states
come from correlator/kept.py and its outcome from outcome_rules.py when the
chunk's lives are handed over, all of them in one frame.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from correlator.actions import Actions
from correlator.connection_schema import ACTION, APP, CONNECTION_SCHEMA, FLAT_COLUMNS, STATE
from correlator.lifecycles import MAX_TRANSITIONS, Conn
from correlator.outcomes import seconds
from correlator.phases import Phases

# What a connection's outcome depends on besides its row (outcome_rules.py).
_DECISION = {
    "seen": pl.Boolean,  # accept calls seen by then
    "close_seen": pl.Boolean,
    "stuck_in": pl.String,
    "fin_read": pl.Boolean,
    "last_old": pl.String,
    "peer_outcome": pl.String,
    "peer": pl.Int64,  # the peer's id while its outcome is still to decide
    "has_tuple": pl.Boolean,
    "life_ns": pl.Int64,
}
# The timewait socket's FIN_WAIT2 comes after every kept transition.
_TW_SEQ = 1 << 62


class LifeRows:
    def __init__(self, actions: Actions) -> None:
        self.actions = actions
        # (life, at_end, the newest time then, accept calls seen by then) as
        # each was finished; the columns are taken from them together.
        self.lives: list[tuple[Conn, bool, int, bool]] = []
        self.conns: list[Conn] = []  # the connections (not listeners), in row order
        self.ends: dict[int, int] = {}  # life -> end of its last kept state
        self.tw: dict[str, list[int]] = {"life": [], "start_ns": [], "dur_ns": []}

    def __len__(self) -> int:
        return len(self.lives)

    def add(self, conn: Conn, at_end: bool, last_ns: int, seen: bool) -> None:
        """The life as it is now (nothing changes a finished life's row fields)."""
        self.lives.append((conn, at_end, last_ns, seen))

    def table(self, t0: int, phases: Phases) -> pl.DataFrame:
        """The rows' plain columns and what their outcomes depend on."""
        lives = self.lives
        conns = [x[0] for x in lives]
        at_end = [x[1] for x in lives]
        last = [x[2] for x in lives]
        end = [c.end_ns if c.end_ns is not None else n for c, n in zip(conns, last, strict=True)]
        self.ends = dict(zip([c.id for c in conns], end, strict=True))
        start = [c.start_ns for c in conns]
        role = [c.role for c in conns]
        listener = [r == "listener" for r in role]
        tup = [c.learn for c in conns]
        remote = [None if li else t for t, li in zip(tup, listener, strict=True)]
        dest = [c.dest for c in conns]
        ph = phases.of_many(np.asarray(start, dtype=np.int64)) if conns else np.empty(0, np.int64)
        table = [*phases.names, None]
        peers = [c.peer_wait for c in conns]
        tw_end = [
            None if p is None else (p.end_ns if p.end_ns is not None else n)
            for p, n in zip(peers, last, strict=True)
        ]
        cols: dict[str, list[Any]] = {
            "id": [c.id for c in conns],
            "kind": ["listener" if li else "connection" for li in listener],
            "role": role,
            "outcome": [c.outcome for c in conns],
            "laddr": [t[0] if t else None for t in tup],
            "lport": [t[1] if t else None for t in tup],
            "raddr": [t[2] if t else None for t in remote],
            "rport": [t[3] if t else None for t in remote],
            "dest_addr": [d[0] if d else None for d in dest],
            "dest_port": [d[1] if d else None for d in dest],
            "family": [c.family for c in conns],
            "skaddr": [c.skaddr for c in conns],
            "start_ns": start,
            "end_ns": [c.end_ns for c in conns],
            "t_start": [seconds(s - t0) for s in start] if t0 else [None] * len(conns),
            "duration_ns": [e - s for e, s in zip(end, start, strict=True)],
            "closed_in_run": [not e for e in at_end],
            "timewait_from": [None] * len(conns),
            "first_old": [c.first_old for c in conns],
            "last_state": [c.state for c in conns],
            "owner_actor": [c.owner_actor for c in conns],
            "owner_pid": [c.owner_pid for c in conns],
            "owner_fd": [c.owner_fd for c in conns],
            "owner_via": [c.owner_via for c in conns],
            "first_cpu_pid": [c.first_cpu_pid for c in conns],
            "transitions_dropped": [max(c.n_rows - MAX_TRANSITIONS, 0) for c in conns],
            "accepted": [c.accepted for c in conns],
            "app_closed": [c.app_closed for c in conns],
            "error": [c.error for c in conns],
            "phase": [table[i] for i in ph.tolist()],
            "seen": [x[3] for x in lives],
            "close_seen": [c.close_seen for c in conns],
            "stuck_in": [c.stuck_in for c in conns],
            "fin_read": [c.fin_read for c in conns],
            "last_old": [c.last_old for c in conns],
            "peer_outcome": [p.outcome if p is not None else None for p in peers],
            "peer": [p.id if p is not None and p.outcome is None else None for p in peers],
            "has_tuple": [t is not None for t in tup],
            "life_ns": [max((w or e) - s, 0) for w, e, s in zip(tw_end, end, start, strict=True)],
        }
        self.conns = [c for c, li in zip(conns, listener, strict=True) if not li]
        for c, w in zip(conns, tw_end, strict=True):
            if w is not None and c.end_ns is not None:
                # Not a tracepoint state: the timewait socket that took over waits
                # in FIN_WAIT2 for the peer's FIN (its close), or to the run's end.
                self.tw["life"].append(c.id)
                self.tw["start_ns"].append(c.end_ns)
                self.tw["dur_ns"].append(w - c.end_ns)
        return pl.DataFrame(cols, schema={**FLAT_COLUMNS, **_DECISION})

    def frame(self, f: pl.DataFrame, kept_states: pl.DataFrame) -> pl.DataFrame:
        """`f` (the table, outcomes decided) in CONNECTION_SCHEMA;
        `kept_states`: (life, seq, state, start_ns, dur_ns, cpu_pid) of these
        lives, in order within each."""
        tw = pl.DataFrame(
            self.tw, schema={"life": pl.Int64, "start_ns": pl.Int64, "dur_ns": pl.Int64}
        )
        states = (
            pl.concat(
                [
                    kept_states.with_columns(timewait=pl.lit(None, pl.Boolean)),
                    tw.select(
                        "life",
                        seq=pl.lit(_TW_SEQ, pl.Int64),
                        state=pl.lit("FIN_WAIT2"),
                        start_ns="start_ns",
                        dur_ns="dur_ns",
                        cpu_pid=pl.lit(None, pl.Int64),
                        timewait=pl.lit(True),
                    ),
                ]
            )
            .sort("life", "seq")
            .group_by("life", maintain_order=True)
            .agg(states=pl.struct("state", "start_ns", "dur_ns", "cpu_pid", "timewait"))
            .rename({"life": "id"})
        )
        first, counts = self.actions.of(f["id"].to_list())
        apps = counts.group_by("id", maintain_order=True).agg(app=pl.struct("event", "n"))
        actions = first.group_by("id", maintain_order=True).agg(actions=pl.struct("ts_ns", "event"))
        for part in (states, apps, actions):
            f = f.join(part, on="id", how="left", maintain_order="left")
        owner = pl.struct(actor="owner_actor", pid="owner_pid", fd="owner_fd", via="owner_via")
        dest = pl.struct(addr="dest_addr", port="dest_port")
        return f.with_columns(
            owner=pl.when(pl.col("owner_pid").is_not_null()).then(owner),
            dest=pl.when(pl.col("dest_addr").is_not_null()).then(dest),
            states=pl.col("states").fill_null(pl.lit([], pl.List(STATE))),
            app=pl.col("app").fill_null(pl.lit([], pl.List(APP))),
            actions=pl.col("actions").fill_null(pl.lit([], pl.List(ACTION))),
        ).select(list(CONNECTION_SCHEMA))
