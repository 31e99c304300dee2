"""Socket incarnations from tcp_state columns: which life each transition is in.

A socket's memory (skaddr) is reused: one incarnation runs from the
transition that opens a life to ->CLOSE. A transition starts a new life when
its socket has none open, or when its old state is CLOSE or LISTEN while the
open life is elsewhere (its ->CLOSE never reached us: the close was lost).
Computed per chunk of transitions in time order with a group-by on skaddr;
lives still open at the end of a chunk carry over to the next.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

# A lifecycle keeps at most this many transitions: a normal connection has
# ~5; a pathological one must not grow memory.
MAX_TRANSITIONS = 24
_OPENERS = ["CLOSE", "LISTEN"]

Tuple4 = tuple[str, int, str, int]


def norm_addr(addr: str) -> str:
    # An IPv6 socket serving an IPv4 peer reports it v4-mapped on one side.
    return addr[7:] if addr.startswith("::ffff:") else addr


# Values every live connection keeps (states, addresses, pids) are one shared
# object each: a column's to_list() makes a new str or int per row, ~60 bytes
# per field per connection held. Bounded, as a bomb may use many addresses.
_SHARED: dict[Any, Any] = {}
_SHARED_MAX = 1 << 16


def shared(values: list[Any]) -> list[Any]:
    """`values` with each equal value the same object."""
    if len(_SHARED) > _SHARED_MAX:
        _SHARED.clear()
    keep = _SHARED.setdefault
    return [keep(v, v) for v in values]


def shared_one(value: Any) -> Any:
    if len(_SHARED) > _SHARED_MAX:
        _SHARED.clear()
    return _SHARED.setdefault(value, value)


def shared_addr(addr: str) -> str:
    return shared_one(norm_addr(addr))  # type: ignore[no-any-return]


def role_of(old: str, new: str) -> str:
    if new == "LISTEN":
        return "listener"
    if new == "SYN_SENT":
        return "active"
    if new == "SYN_RECV" or old in ("LISTEN", "SYN_RECV", "NEW_SYN_RECV"):
        return "passive"
    return "unknown"


@dataclass(slots=True, eq=False)
class Conn:
    """One incarnation of a socket, from its first transition to ->CLOSE.

    The transition fields (state, transitions, end) are filled from columns
    chunk by chunk; the join fields (owner, accepted, ...) by the joins.
    """

    id: int
    skaddr: int
    role: str  # "active" (connect), "passive" (accepted child), "listener", "unknown"
    start_ns: int
    first_old: str
    family: int
    first_cpu_pid: int
    state: str = ""
    state_ns: int = 0
    last_old: str = ""
    n_rows: int = 0
    kept_state: str = ""  # after its last kept transition (correlator/kept.py)
    close_pos: int | None = None  # position of ->CLOSE (or of the lost close)
    end_ns: int | None = None
    close_seen: bool = True
    stuck_in: str | None = None  # CLOSE_WAIT / FIN_WAIT2 held past the last phase
    learn: Tuple4 | None = None  # the tuple, from the transition that told it
    # Join fields.
    dest: tuple[str, int] | None = None
    owner_actor: str | None = None
    owner_pid: int | None = None
    owner_fd: int | None = None
    owner_via: str | None = None
    accepted: bool = False
    app_closed: bool = False
    fin_read: bool = False  # its owner logged reading the peer's FIN (peer_close)
    error: str | None = None
    outcome: str | None = None
    # An orphaned active closer leaves FIN_WAIT2 for a timewait socket at once,
    # invisible to the tracepoint. Whether that socket then sat in FIN_WAIT2
    # depends on its peer, still in CLOSE_WAIT: `peer_wait` links to it,
    # `twin` back, and the closer is parked until the peer's fate is known.
    peer_wait: Conn | None = None
    twin: Conn | None = None
    parked: bool = False
    ended: bool = False  # finished by the joins, its outcome maybe not yet decided
    held_by: int | None = None

    def ended_before(self, pos: int) -> bool:
        return self.close_pos is not None and self.close_pos < pos


# Milestone kinds at one position, in the order one transition's handling did them.
LOST, OPEN, LEARN, CLOSE = 0, 1, 2, 3


@dataclass
class ChunkLives:
    """What one chunk of transitions tells: per row its life, and the milestones."""

    conn_ids: np.ndarray  # per row, in row (position) order
    touched: list[Conn]  # the lives with rows here, by id
    milestones: list[tuple[int, int, Conn]]  # (pos, kind, conn)
    state_time: pl.DataFrame  # state, bucket, count, total, max
    live_delta: pl.DataFrame  # pos, state, delta
    live_count: np.ndarray  # per row: live lives after its open, before its close
    gaps: int
    lost: int


@dataclass
class Lives:
    """Lives open across chunks, and the numbering of lives."""

    experiment_end: int | None = None
    open_by_sk: dict[int, Conn] = field(default_factory=dict)
    next_id: int = 1
    live: int = 0

    def chunk(self, tcp: pl.DataFrame) -> ChunkLives:
        """`tcp`: the chunk's transitions with a `pos` column, sorted by pos."""
        carry = self.open_by_sk
        sk = tcp["skaddr"].to_numpy()
        old = tcp["old"].to_numpy()
        new = tcp["new"].to_numpy()
        ts = tcp["ts"].to_numpy()
        pos = tcp["pos"].to_numpy()
        n = len(tcp)
        # The previous transition of the same socket: in this chunk, or the
        # state its open life carried over.
        # Rows by socket, in row order within each (polars' windows over
        # ~10^4 small groups cost several times this).
        by_sk = np.argsort(sk, kind="stable")
        same_sk = sk[by_sk][1:] == sk[by_sk][:-1]
        prev_sorted = np.full(n, -1, np.int64)
        prev_sorted[1:][same_sk] = by_sk[:-1][same_sk]
        prev_i = np.empty(n, np.int64)
        prev_i[by_sk] = prev_sorted
        has_prev = prev_i >= 0
        prev_idx = np.where(has_prev, prev_i, 0).astype(np.int64)
        prev_new = np.full(n, None, dtype=object)
        prev_new[has_prev] = new[prev_idx[has_prev]]
        prev_ts = np.where(has_prev, ts[prev_idx], 0).astype(np.int64)
        first_rows = np.nonzero(~has_prev)[0]
        carried: dict[int, Conn] = {}
        none_prev = ~has_prev
        for i, s in zip(first_rows.tolist(), sk[first_rows].tolist(), strict=True):
            c = carry.get(s)
            if c is not None:
                carried[i] = c
                prev_new[i] = c.state
                prev_ts[i] = c.state_ns
                none_prev[i] = False
        is_opener = np.isin(old, _OPENERS)
        prev_close = prev_new == "CLOSE"
        differs = (old != prev_new) & ~none_prev & ~prev_close
        lost = differs & is_opener
        start = none_prev | prev_close | lost
        gap = differs & ~is_opener
        # Life ids in position order; other rows take their socket's current one.
        n_start = int(start.sum())
        ids_or_null = np.full(n, -1, dtype=np.int64)
        ids_or_null[start] = np.arange(self.next_id, self.next_id + n_start)
        self.next_id += n_start
        for i, c in carried.items():
            if not start[i]:
                ids_or_null[i] = c.id
        # Every socket's first row here has a life (new or carried): fill
        # forward within each socket.
        sorted_ids = ids_or_null[by_sk]
        keep = np.where(sorted_ids >= 0, np.arange(n), 0)
        ids = np.empty(n, np.int64)
        ids[by_sk] = sorted_ids[np.maximum.accumulate(keep)] if n else sorted_ids

        # Lives: new ones from their opening row; the rest by group-by on the
        # life id (rows in position order within each life).
        conns: dict[int, Conn] = {c.id: c for c in carried.values()}
        milestones: list[tuple[int, int, Conn]] = []
        end = self.experiment_end
        sport = tcp["sport"].fill_null(0).to_numpy()
        dport = tcp["dport"].fill_null(0).to_numpy()
        fam = tcp["family"].fill_null(0).to_list()
        old_l, new_l, ts_l, pos_l = (
            shared(old.tolist()),
            shared(new.tolist()),
            ts.tolist(),
            pos.tolist(),
        )
        cpu_l = shared(tcp["cpu_pid"].to_list())
        ids_l = ids.tolist()
        prev_ts_l = prev_ts.tolist()
        for i in np.nonzero(start)[0].tolist():
            if lost[i]:
                # The socket's open life never got its ->CLOSE: it ends at its
                # last transition, and this one opens the next life.
                pc = carried[i] if i in carried else conns[ids_l[prev_idx[i]]]
                pc.close_pos = pos_l[i]
                pc.end_ns = prev_ts_l[i]
                pc.close_seen = False
                milestones.append((pos_l[i], LOST, pc))
            c = Conn(
                id=ids_l[i],
                skaddr=int(sk[i]),
                role=role_of(old_l[i], new_l[i]),
                start_ns=ts_l[i],
                first_old=old_l[i],
                family=int(fam[i] or 0),
                first_cpu_pid=cpu_l[i],
                kept_state=old_l[i],
            )
            conns[c.id] = c
            milestones.append((pos_l[i], OPEN, c))
        if end is not None:
            # A CLOSE_WAIT or FIN_WAIT2 held across the experiment's end is stuck
            # (unless its owner closed it unread: outcome_rules._decide).
            held = (
                ~start
                & np.isin(prev_new, ["CLOSE_WAIT", "FIN_WAIT2"])
                & (prev_ts <= end)
                & (ts > end)
            )
            for i in np.nonzero(held)[0].tolist():
                conns[ids_l[i]].stuck_in = shared([str(prev_new[i])])[0]
        _learn_all(conns, ids, sport, dport, tcp, milestones, pos_l)
        # Per life: its last transition its state (kept ones: correlator/kept.py).
        order = np.argsort(ids, kind="stable")
        life, first, count = np.unique(ids[order], return_index=True, return_counts=True)
        rows = order.tolist()
        touched = []
        for cid, a, k in zip(life.tolist(), first.tolist(), count.tolist(), strict=True):
            c = conns[cid]
            touched.append(c)
            r = rows[a + k - 1]
            c.last_old, c.state, c.state_ns = old_l[r], new_l[r], ts_l[r]
            c.n_rows += k
        for i in np.nonzero(new == "CLOSE")[0].tolist():
            c = conns[ids_l[i]]
            c.close_pos = pos_l[i]
            c.end_ns = ts_l[i]
            milestones.append((pos_l[i], CLOSE, c))

        # Open lives carry over; closed (or lost) ones leave.
        for c in conns.values():
            if c.close_pos is None:
                carry[c.skaddr] = c
            elif carry.get(c.skaddr) is c:
                del carry[c.skaddr]

        # Time spent in each state left: (state, duration) per row that leaves one.
        leave = ~start | lost
        dur = np.where(lost, 0, ts - prev_ts)
        d = dur[leave]
        st = pl.DataFrame(
            {"state": prev_new[leave].astype(str).tolist(), "dur": d, "bucket": bit_length(d)},
            schema={"state": pl.String, "dur": pl.Int64, "bucket": pl.Int64},
        )
        state_time = st.group_by("state", "bucket").agg(
            pl.len().alias("count"),
            pl.col("dur").sum().alias("total"),
            pl.col("dur").max().alias("mx"),
        )

        # Live state counts: each row leaves its previous state and enters its new one.
        minus = leave & ~prev_close & ~none_prev
        enter = new != "CLOSE"
        schema = {"pos": pl.Int64, "state": pl.String, "delta": pl.Int64}
        live_delta = pl.concat(
            [
                pl.DataFrame(
                    {
                        "pos": pos[minus],
                        "state": prev_new[minus].astype(str).tolist(),
                        "delta": np.full(int(minus.sum()), -1, np.int64),
                    },
                    schema=schema,
                ),
                pl.DataFrame(
                    {
                        "pos": pos[enter],
                        "state": new[enter].astype(str).tolist(),
                        "delta": np.ones(int(enter.sum()), np.int64),
                    },
                    schema=schema,
                ),
            ]
        )
        # Live lives: +1 at an open, -1 at a lost close (before), -1 at ->CLOSE (after).
        closes = new == "CLOSE"
        pre = start.astype(np.int64) - lost.astype(np.int64)
        run = self.live + np.cumsum(pre - closes.astype(np.int64))
        live_count = run + closes.astype(np.int64)
        self.live = int(run[-1]) if n else self.live
        milestones.sort(key=lambda m: (m[0], m[1]))
        return ChunkLives(
            conn_ids=ids,
            touched=touched,
            milestones=milestones,
            state_time=state_time,
            live_delta=live_delta,
            live_count=np.where(start, live_count, 0),
            gaps=int(gap.sum()),
            lost=int(lost.sum()),
        )


def _learn_all(
    conns: dict[int, Conn],
    ids: np.ndarray,
    sport: np.ndarray,
    dport: np.ndarray,
    tcp: pl.DataFrame,
    milestones: list[tuple[int, int, Conn]],
    pos_l: list[int],
) -> None:
    """Each life's tuple from its first transition with both ports (a
    listener's: with its port), and its destination from the first one with
    a destination port up to then; lives that know theirs already skip."""
    waiting = [cid for cid, c in conns.items() if c.learn is None]
    if not waiting:
        return
    wait = np.isin(ids, waiting)
    listeners = [cid for cid in waiting if conns[cid].role == "listener"]
    is_lst = np.isin(ids, listeners)
    told = wait & np.where(is_lst, sport != 0, (sport != 0) & (dport != 0))
    rows = np.nonzero(told)[0]
    learnt, at = np.unique(ids[rows], return_index=True)
    learn_row = dict(zip(learnt.tolist(), rows[at].tolist(), strict=True))
    at_rows = list(learn_row.values())
    saddr = _addrs(tcp["saddr"].gather(at_rows).to_list())
    daddr = _addrs(tcp["daddr"].gather(at_rows).to_list())
    sp, dp = sport[at_rows].tolist(), dport[at_rows].tolist()
    # Every row here tells a whole tuple (a listener's: its port).
    for (cid, r), sa, da, s, d in zip(learn_row.items(), saddr, daddr, sp, dp, strict=True):
        c = conns[cid]
        c.learn = (sa, s, "", 0) if c.role == "listener" else (sa, s, da, d)
        milestones.append((pos_l[r], LEARN, c))
    # The destination: only rows up to the one that told the tuple count.
    dest_rows = np.nonzero(wait & (dport != 0))[0]
    if len(dest_rows):
        lives, at = np.unique(ids[dest_rows], return_index=True)
        first = dest_rows[at]
        dests = _addrs(tcp["daddr"].gather(first).to_list())
        ports = dport[first].tolist()
        for cid, r, da, d in zip(lives.tolist(), first.tolist(), dests, ports, strict=True):
            c = conns[cid]
            if c.dest is None and r <= learn_row.get(cid, r):
                # Many lives share a destination (a server's): one tuple each.
                c.dest = shared_one((da, d))


def _addrs(values: list[Any]) -> list[str]:
    """shared_addr of each (addresses are few: once per distinct one)."""
    table = {v: shared_addr(str(v)) for v in set(values)}
    return [table[v] for v in values]


def bit_length(v: np.ndarray) -> np.ndarray:
    """int.bit_length() of each non-negative value (0 for 0 and below)."""
    v = np.maximum(np.asarray(v, dtype=np.int64), 0)
    _, e = np.frexp(v.astype(np.float64))
    b = e.astype(np.int64)
    # frexp of a float: correct where the float rounding crossed a power of two.
    one = np.ones_like(v)
    b = np.where((b > 0) & ((one << np.maximum(b - 1, 0)) > v), b - 1, b)
    b = np.where((b < 63) & ((one << np.minimum(b, 62)) <= v) & (v > 0), b + 1, b)
    return np.where(v > 0, b, 0)
