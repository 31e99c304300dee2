"""The finished lives as the frame the sinks take (connection_schema.py).

Each life's fields are taken when the joins finish it (later app records
must not change its row) as plain column lists; its kept transitions' states
come from correlator/kept.py and its outcome from outcome_rules.py when the
chunk's lives are handed over, all of them in one frame.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from correlator.connection_schema import ACTION, APP, CONNECTION_SCHEMA, FLAT_COLUMNS, STATE
from correlator.lifecycles import MAX_TRANSITIONS, Conn
from correlator.outcomes import seconds, timewait_end

# What a connection's outcome depends on besides its row (outcome_rules.py).
_DECISION = {
    "seen": pl.Boolean,  # accept calls seen by then
    "close_seen": pl.Boolean,
    "stuck_in": pl.String,
    "last_old": pl.String,
    "peer_outcome": pl.String,
    "peer": pl.Int64,  # the peer's id while its outcome is still to decide
    "has_tuple": pl.Boolean,
    "life_ns": pl.Int64,
}
_APPS = {"id": pl.Int64, "event": pl.String, "n": pl.Int64}
_ACTIONS = {"id": pl.Int64, "ts_ns": pl.Int64, "event": pl.String}
# The timewait socket's FIN_WAIT2 comes after every kept transition.
_TW_SEQ = 1 << 62


class LifeRows:
    def __init__(self) -> None:
        self.cols: dict[str, list[Any]] = {k: [] for k in (*FLAT_COLUMNS, *_DECISION)}
        self.conns: list[Conn] = []  # the connections (not listeners), in row order
        self.apps: dict[str, list[Any]] = {k: [] for k in _APPS}
        self.actions: dict[str, list[Any]] = {k: [] for k in _ACTIONS}
        self.tw: dict[str, list[int]] = {"life": [], "start_ns": [], "dur_ns": []}
        self.ends: dict[int, int] = {}  # life -> end of its last kept state

    def __len__(self) -> int:
        return len(self.cols["id"])

    def add(
        self, conn: Conn, at_end: bool, t0: int, last_ns: int, phase: str | None, seen: bool
    ) -> None:
        """The life as it is now."""
        c = self.cols
        end = conn.end_ns if conn.end_ns is not None else last_ns
        self.ends[conn.id] = end
        t = conn.addr4
        listener = conn.role == "listener"
        c["id"].append(conn.id)
        c["kind"].append("listener" if listener else "connection")
        c["role"].append(conn.role)
        c["outcome"].append(conn.outcome)
        c["laddr"].append(t[0] if t else None)
        c["lport"].append(t[1] if t else None)
        c["raddr"].append(t[2] if t and not listener else None)
        c["rport"].append(t[3] if t and not listener else None)
        d = conn.dest
        c["dest_addr"].append(d[0] if d else None)
        c["dest_port"].append(d[1] if d else None)
        c["family"].append(conn.family)
        c["skaddr"].append(conn.skaddr)
        c["start_ns"].append(conn.start_ns)
        c["end_ns"].append(conn.end_ns)
        c["t_start"].append(seconds(conn.start_ns - t0) if t0 else None)
        c["duration_ns"].append(end - conn.start_ns)
        c["closed_in_run"].append(not at_end)
        c["timewait_from"].append(None)
        c["first_old"].append(conn.first_old)
        c["last_state"].append(conn.state)
        c["owner_actor"].append(conn.owner_actor)
        c["owner_pid"].append(conn.owner_pid)
        c["owner_fd"].append(conn.owner_fd)
        c["owner_via"].append(conn.owner_via)
        c["first_cpu_pid"].append(conn.first_cpu_pid)
        c["transitions_dropped"].append(max(conn.n_rows - MAX_TRANSITIONS, 0))
        c["accepted"].append(conn.accepted)
        c["app_closed"].append(conn.app_closed)
        c["error"].append(conn.error)
        c["phase"].append(phase)
        if conn.actions:
            counts = conn.action_counts()
            self.apps["id"].extend([conn.id] * len(counts))
            self.apps["event"].extend(counts)
            self.apps["n"].extend(counts.values())
            self.actions["id"].extend([conn.id] * len(conn.actions))
            for ts, event in conn.actions:
                self.actions["ts_ns"].append(ts)
                self.actions["event"].append(event)
        tw_end = timewait_end(conn, last_ns)
        peer = conn.peer_wait
        c["seen"].append(seen)
        c["close_seen"].append(conn.close_seen)
        c["stuck_in"].append(conn.stuck_in)
        c["last_old"].append(conn.last_old)
        c["peer_outcome"].append(peer.outcome if peer is not None else None)
        c["peer"].append(peer.id if peer is not None and peer.outcome is None else None)
        c["has_tuple"].append(t is not None)
        c["life_ns"].append(max((tw_end or end) - conn.start_ns, 0))
        if not listener:
            self.conns.append(conn)
        if tw_end is not None and conn.end_ns is not None:
            # Not a tracepoint state: the timewait socket that took over waits
            # in FIN_WAIT2 for the peer's FIN (its close), or to the run's end.
            self.tw["life"].append(conn.id)
            self.tw["start_ns"].append(conn.end_ns)
            self.tw["dur_ns"].append(tw_end - conn.end_ns)

    def table(self) -> pl.DataFrame:
        """The rows' plain columns and what their outcomes depend on."""
        return pl.DataFrame(self.cols, schema={**FLAT_COLUMNS, **_DECISION})

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
        apps = (
            pl.DataFrame(self.apps, schema=_APPS)
            .group_by("id", maintain_order=True)
            .agg(app=pl.struct("event", "n"))
        )
        actions = (
            pl.DataFrame(self.actions, schema=_ACTIONS)
            .group_by("id", maintain_order=True)
            .agg(actions=pl.struct("ts_ns", "event"))
        )
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
