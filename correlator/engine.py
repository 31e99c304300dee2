"""The correlator: joins kernel events to application records, one pass.

Data flow, all in CLOCK_MONOTONIC nanoseconds:

  envelopes (arrival order) -> Reorderer (heap + watermark) -> time order
  -> join (live connections keyed by skaddr, indices by 4-tuple and (pid, fd))
  -> settle queue (a short grace so late owner facts reach earlier rows)
  -> sink: timeline rows and finished lifecycles, streamed out.

Memory is bounded by live connections plus what the reorder window and the
grace hold, never by the length of the run.
"""

from __future__ import annotations

import bisect
import errno as errno_mod
import heapq
import itertools
import math
import operator
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from bus.schema import Envelope, Kind
from correlator.stats import ExactHistogram, Log2Histogram, Series

Tuple4 = tuple[str, int, str, int]

# A lifecycle keeps at most this many transitions and app actions: a normal
# connection has ~5 transitions; a pathological one must not grow memory.
MAX_TRANSITIONS = 24
MAX_ACTIONS = 16
MAX_TIDS = 4096

OUTCOMES = (
    "clean",
    "time_wait",
    "stuck_close_wait",
    "stuck_fin_wait2",
    "refused",
    "reset",
    "never_accepted",
    "failed_connect",
    "open_at_end",
    "unknown",  # its closing transitions were never seen (filtered or dropped)
)

# States after which the kernel's ->CLOSE means a timewait socket took over.
_TIME_WAIT_FROM = {"FIN_WAIT2", "CLOSING", "TIME_WAIT"}
_GUESSES = ("cpu_pid", "listener")
_SOCKET_ACTIONS = {"listen", "connect", "accept", "connect_failed", "accept_failed"}


class Sink(Protocol):
    def event(self, row: dict[str, Any]) -> None: ...
    def connection(self, row: dict[str, Any]) -> None: ...


def errno_name(num: int) -> str:
    return errno_mod.errorcode.get(num, f"errno{num}")


def numeric_tree(body: dict[Any, Any]) -> dict[str, Any]:
    """The numeric leaves of a STATS body, nesting kept, booleans as 0/1.

    Counts are what expectations compare; strings and lists are not, and a
    NaN or infinity would make summary.json invalid JSON.
    """
    out: dict[str, Any] = {}
    for k, v in body.items():
        if isinstance(v, bool):
            out[str(k)] = int(v)
        elif isinstance(v, int) or (isinstance(v, float) and math.isfinite(v)):
            out[str(k)] = v
        elif isinstance(v, dict):
            out[str(k)] = numeric_tree(v)
    return out


def seconds(ns: int) -> float:
    """ns in seconds, rounded to the ns: round(ns / 1e9, 9), without round()'s
    cost where it changes nothing (the nearest double to a whole number of ns
    is its own rounding while a double's step is finer than 1 ns: < 4e6 s)."""
    if -_EXACT_NS < ns < _EXACT_NS:
        return ns / 1e9
    return round(ns / 1e9, 9)


def norm_addr(addr: str) -> str:
    # An IPv6 socket serving an IPv4 peer reports it v4-mapped on one side.
    return addr[7:] if addr.startswith("::ffff:") else addr


@dataclass(slots=True)
class Conn:
    """One incarnation of a socket, from its first transition to ->CLOSE."""

    id: int
    skaddr: int
    role: str  # "active" (connect), "passive" (accepted child), "listener", "unknown"
    start_ns: int
    first_old: str
    state: str
    state_ns: int
    family: int
    first_cpu_pid: int
    addr4: Tuple4 | None = None
    dest: tuple[str, int] | None = None
    transitions: list[tuple[int, str, str, int]] = field(default_factory=list)
    dropped_transitions: int = 0
    last_old: str = ""
    end_ns: int | None = None
    owner_actor: str | None = None
    owner_pid: int | None = None
    owner_fd: int | None = None
    owner_via: str | None = None
    accepted: bool = False
    app_closed: bool = False
    error: str | None = None
    actions: list[tuple[int, str]] = field(default_factory=list)
    action_counts: dict[str, int] = field(default_factory=dict)
    outcome: str | None = None
    close_seen: bool = True
    stuck_in: str | None = None  # CLOSE_WAIT / FIN_WAIT2 held past the last phase
    # An orphaned active closer leaves FIN_WAIT2 for a timewait socket at once
    # (tcp_time_wait with substate FIN_WAIT2), invisible to the tracepoint.
    # Whether that socket then sat in FIN_WAIT2 depends on its peer, still in
    # CLOSE_WAIT: `peer_wait` links to it, `twin` back, and the closer is
    # parked until the peer's fate is known.
    peer_wait: Conn | None = None
    twin: Conn | None = None
    parked: bool = False
    held_by: int | None = None  # the pid it is counted for in conns_by_owner
    # owner_dict() made once for all the rows that share it; set_owner drops it.
    owner_cache: dict[str, Any] | None = None

    def set_owner(self, actor: str | None, pid: int, fd: int | None, via: str) -> None:
        # The first real owner fact wins; later ones only fill gaps. A guess
        # (the on-CPU pid, the listener's owner) gives way to a real fact.
        self.owner_cache = None
        if self.owner_pid is None or (self.owner_via in _GUESSES and via not in _GUESSES):
            if self.owner_pid != pid:
                self.owner_actor = self.owner_fd = None
            self.owner_pid, self.owner_via = pid, via
        if self.owner_pid == pid:
            self.owner_actor = self.owner_actor or actor
            if fd is not None and self.owner_fd is None:
                self.owner_fd = fd

    def owner_dict(self) -> dict[str, Any] | None:
        """The owner as a row shows it; one shared dict until the owner changes."""
        if self.owner_pid is None:
            return None
        d = self.owner_cache
        if d is None:
            d = self.owner_cache = {
                "actor": self.owner_actor,
                "pid": self.owner_pid,
                "fd": self.owner_fd,
                "via": self.owner_via,
            }
        return d


_APP_COVERAGE = {
    e: (f"coverage.app_{e}", f"coverage.app_{e}_matched")
    for e in ("connect", "accept", "connect_failed")
}
# Dotted count paths split once (a handful of distinct ones per run).
_PATHS: dict[str, list[str]] = {}
_RowKeys = tuple[tuple[str, str], str, str]
_EXACT_NS = 10**15
# Count names per kernel row type, built once: (outside the lab), seen, owned.
_ROW_KEYS: dict[str, _RowKeys] = {}


def _row_keys(typ: str) -> _RowKeys:
    keys = _ROW_KEYS[typ] = (
        ("kernel.outside_lab", f"kernel.outside_lab_{typ}"),
        f"coverage.kernel_{typ}",
        f"coverage.kernel_{typ}_owned",
    )
    return keys


# A reorder entry: (ts, arrival tie, handler or None for an unknown probe, body).
Entry = tuple[int, int, Any, Any]
_TS = operator.itemgetter(0)
_TS_TIE = operator.itemgetter(0, 1)


class Reorderer:
    """Puts items from many senders back in time order within a bounded window.

    Each batch goes in as one run sorted by (time, arrival); a heap orders the
    runs by their first item. Releasing takes from each run the stretch the
    watermark passed and sorts those stretches together, which timsort does
    in C by merging them: exactly the (time, arrival) order one heap of every
    item would give, at a fraction of the cost.

    Items wait until the watermark passes them. An item older than what was
    already released is 'late': it is still delivered (next), and counted,
    never dropped.
    """

    def __init__(self) -> None:
        # [head ts, head tie, run, index of the head]: ties are unique, so the
        # heap never compares further than the first two fields.
        self._heap: list[list[Any]] = []
        self.tie = itertools.count()
        self.released_ns = 0
        self.late = 0
        self.max_held = 0
        self._held = 0

    def push_run(self, run: list[Entry]) -> None:
        """Add one batch of entries, their ties rising in arrival order."""
        if not run:
            return
        released = self.released_ns
        for e in run:
            if e[0] < released:
                self.late += 1
        run.sort(key=_TS)  # stable: equal times keep their arrival order
        head = run[0]
        heapq.heappush(self._heap, [head[0], head[1], run, 0])
        self._held += len(run)
        if self._held > self.max_held:
            self.max_held = self._held

    def pop_until(self, watermark: int) -> list[Entry]:
        heap = self._heap
        parts: list[list[Entry]] = []
        rest: list[list[Any]] = []
        while heap and heap[0][0] <= watermark:
            top = heapq.heappop(heap)
            run: list[Entry] = top[2]
            i = top[3]
            j = bisect.bisect_right(run, watermark, lo=i, key=_TS)
            parts.append(run[i:j] if i or j < len(run) else run)
            if j < len(run):
                head = run[j]
                top[0], top[1], top[3] = head[0], head[1], j
                rest.append(top)  # its head is past the mark: not again this time
        for top in rest:
            heapq.heappush(heap, top)
        if not parts:
            return []
        if len(parts) == 1:
            out = parts[0]
        else:
            out = list(itertools.chain.from_iterable(parts))
            out.sort(key=_TS_TIE)
        self._held -= len(out)
        if out[-1][0] > self.released_ns:
            self.released_ns = out[-1][0]
        return out

    def drain(self) -> list[Entry]:
        return self.pop_until(1 << 63)

    def __len__(self) -> int:
        return self._held


@dataclass
class CorrelatorConfig:
    # Events from a sender that is still active wait until every active sender
    # has sent past them, but never longer than `window_ns` of arrival time.
    window_ns: int = 2_000_000_000
    # Items within one stream can be a little out of order (per-CPU delivery).
    slack_ns: int = 100_000_000
    # How much further than already seen a stream's lag may grow (see _watermark).
    lag_margin_ns: int = 1_000_000_000
    # How long a finished connection stays joinable for late app records.
    grace_ns: int = 500_000_000
    # Resolution of the kernel-derived live-state series.
    sample_ns: int = 100_000_000
    series_cap: int = 2000


class Correlator:
    """Feed envelopes in arrival order, then call finish() for the summary."""

    def __init__(
        self,
        sink: Sink,
        meta: dict[str, Any] | None = None,
        config: CorrelatorConfig | None = None,
    ) -> None:
        self.sink = sink
        self.meta = meta or {}
        self.cfg = config or CorrelatorConfig()
        self.reorder = Reorderer()
        self._ids = itertools.count(1)
        self.t0 = int(self.meta.get("started_mono_ns") or 0)

        # Who is who: pid -> actor name, from run.json and from the logs.
        self.pid_actor: dict[int, str] = {}
        for name, info in (self.meta.get("actors") or {}).items():
            if isinstance(info, dict) and isinstance(info.get("pid"), int):
                self.pid_actor[info["pid"]] = name
        phases = [p for p in self.meta.get("phases") or [] if isinstance(p, dict) and "name" in p]
        phases.sort(key=lambda p: p.get("start_mono_ns") or 0)
        self.phase_names = [str(p["name"]) for p in phases]
        self.phase_starts = [int(p.get("start_mono_ns") or 0) for p in phases]
        # The experiment is over when its last phase ends; what the teardown
        # does after that (killing a leaker closes its sockets) is not its result.
        ends = [int(p["end_mono_ns"]) for p in phases if isinstance(p.get("end_mono_ns"), int)]
        self.experiment_end: int | None = max(ends) if ends else None
        # The phase of the last time looked up, valid over [lo, hi).
        self._phase_span: tuple[int, int, str | None] = (0, 0, None)

        # For the watermark: each sender's last send time; per stream (sender,
        # probe) the newest item time and the worst lag of a batch behind its
        # send time.
        self.sender_env: dict[str, int] = {}
        self.stream_seen: dict[tuple[str, str], int] = {}
        self.stream_lag: dict[tuple[str, str], int] = {}
        self.arrival_ns = 0

        # Live joins.
        self.live: dict[int, Conn] = {}
        self.by_tuple: dict[Tuple4, list[Conn]] = {}
        self.by_pidfd: dict[tuple[int, int], Conn] = {}
        self.unaccepted: dict[tuple[str, int], Conn] = {}
        # Failed connects by the pid that called connect(): their CLOSE->SYN_SENT
        # runs in that process's context, so first_cpu_pid is the caller.
        self.failed: dict[int, deque[Conn]] = {}
        self.listeners: dict[tuple[str, int], Conn] = {}
        # Rows wait as (ts, row, conn), finished connections as (end_ns, None, conn).
        self.settle: deque[tuple[int, dict[str, Any] | None, Conn | None]] = deque()
        self.now_ns = 0
        self.first_ns: int | None = None
        self.last_ns = 0
        self.max_live = 0
        self.max_settle = 0

        # Live state counts from the tracepoint (no TIME_WAIT there by design).
        self.live_states: dict[str, int] = {}
        self.kernel_series = Series(self.cfg.series_cap)
        self._next_sample = 0
        self.observer_series = Series(self.cfg.series_cap)
        self.fd_series = Series(self.cfg.series_cap)
        self.probe_programs: dict[str, dict[str, int]] = {}
        # Each actor's last progress report (its STATS body's numeric leaves),
        # and per phase the last one sent before that phase ended.
        self.progress: dict[str, dict[str, Any]] = {}
        self._progress_ts: dict[str, int] = {}
        self.phase_ends: list[int | None] = [
            p["end_mono_ns"] if isinstance(p.get("end_mono_ns"), int) else None for p in phases
        ]
        self.phase_progress: dict[str, dict[str, tuple[int, dict[str, Any]]]] = {}
        # pid -> the epoll probe's in-kernel log2 histogram of ready counts
        # (running totals); the only epoll data when per-call events are off.
        self.epoll_kernel_hist: dict[int, list[int]] = {}

        # Aggregates.
        self.n: dict[str, int] = {}
        self.outcomes: dict[str, int] = {}
        self.outcome_owner: dict[tuple[str, str, int, str], int] = {}
        self.errors: dict[str, int] = {}
        self.error_owner: dict[tuple[str, str, str, int], int] = {}
        self.app_events: dict[str, int] = {}
        self.accepts: dict[int, dict[str, int]] = {}
        self.epoll: dict[int, dict[str, Any]] = {}
        self.lifetimes: dict[str, Log2Histogram] = {}
        self.state_time: dict[str, Log2Histogram] = {}
        self.phase_counts: dict[str, dict[str, Any]] = {}
        self.peers_of_stuck: int = 0
        # Reversed tuples of stuck CLOSE_WAIT sockets and tuples of stuck
        # FIN_WAIT2 ones: bounded by the leak itself.
        self._stuck_cw: set[Tuple4] = set()
        self._stuck_fw2: set[Tuple4] = set()
        self.no_port_failures = 0
        self.conns_by_owner: dict[int, int] = {}
        self.conns_by_owner_max: dict[int, int] = {}

        self._kernel_handlers: dict[str, Callable[[int, dict[str, Any]], None]] = {
            "tcp_state": self._on_tcp_state,
            "accept": self._on_accept,
            "epoll": self._on_epoll,
        }

    # ---- input -----------------------------------------------------------

    def feed(self, env: Envelope) -> None:
        self.arrival_ns = max(self.arrival_ns, env.mono_ns)
        kind = env.kind
        sender = env.sender
        if kind is Kind.KERNEL or kind is Kind.LOG:
            n = self.n
            tie = self.reorder.tie
            run: list[Entry] = []
            append = run.append
            if kind is Kind.KERNEL:
                n["envelopes.kernel"] = n.get("envelopes.kernel", 0) + 1
                default = str(env.body.get("probe", ""))
                handlers = self._kernel_handlers
                for it in env.body["events"]:
                    ts = it.get("ts") if isinstance(it, dict) else None
                    if not isinstance(ts, int):
                        n["rejected.kernel_event"] = n.get("rejected.kernel_event", 0) + 1
                        continue
                    append((ts, next(tie), handlers.get(it.get("type") or default), it))
            else:
                n["envelopes.log"] = n.get("envelopes.log", 0) + 1
                default = ""
                on_app = self._on_app
                for it in env.body["records"]:
                    ts = it.get("mono_ns") if isinstance(it, dict) else None
                    if not isinstance(ts, int):
                        n["rejected.app_record"] = n.get("rejected.app_record", 0) + 1
                        continue
                    append((ts, next(tie), on_app, it))
            self.reorder.push_run(run)  # sorts the run: its ends are its extremes
            lo = min(env.mono_ns, run[0][0]) if run else env.mono_ns
            hi = max(run[-1][0], 0) if run else 0
            # Each probe has its own ring buffer: a stream in time order of
            # its own, interleaved with the others in the probe process's batches.
            stream = (sender, default)
            self.stream_lag[stream] = max(self.stream_lag.get(stream, 0), env.mono_ns - lo)
            self.stream_seen[stream] = max(self.stream_seen.get(stream, 0), hi)
        elif kind is Kind.STATS:
            self._on_stats(env)
        elif kind is Kind.EOF:
            # A sender that said eof holds nobody back any more.
            for stream in [st for st in self.stream_seen if st[0] == sender]:
                del self.stream_seen[stream]
        self.sender_env[sender] = env.mono_ns
        self._run(self.reorder.pop_until(self._watermark()))

    def _watermark(self) -> int:
        """Time before which no item can still arrive, as far as we can tell.

        Per stream (an actor's log, one probe's ring buffer): its items come
        in time order, so it has delivered everything up to its newest item;
        and anything its sender sends later is at most the stream's worst lag
        older than the send time. The slowest stream sets the mark, but never
        holds items beyond `window_ns`.
        """
        env, lag = self.sender_env, self.stream_lag
        # A backlogged ring buffer can suddenly lag far more than before: the
        # margin keeps a quiet stream's guess well behind its sender's clock.
        margin = self.cfg.lag_margin_ns
        marks = [max(seen, env[st[0]] - lag[st] - margin) for st, seen in self.stream_seen.items()]
        by_senders = min(marks) if marks else self.arrival_ns
        return max(by_senders, self.arrival_ns - self.cfg.window_ns) - self.cfg.slack_ns

    def _run(self, entries: list[Entry]) -> None:
        """Process released entries in time order: the one hot loop."""
        if not entries:
            return
        if self.first_ns is None:
            self.first_ns = entries[0][0]
        grace = self.cfg.grace_ns
        settle = self.settle
        now = self.now_ns  # == last_ns: the newest time processed
        for ts, _, handler, body in entries:
            if ts > now:
                now = self.now_ns = self.last_ns = ts
            if handler is None:
                self.n["rejected.unknown_probe"] = self.n.get("rejected.unknown_probe", 0) + 1
                continue
            handler(ts, body)
            if ts >= self._next_sample:
                self.kernel_series.add(ts, {k: v for k, v in self.live_states.items() if v})
                self._next_sample = ts + self.cfg.sample_ns
            if settle and settle[0][0] <= now - grace:
                self._settle(now - grace)

    # ---- kernel: TCP state --------------------------------------------------

    def _on_tcp_state(self, ts: int, ev: dict[str, Any]) -> None:
        n = self.n
        n["kernel.tcp_state"] = n.get("kernel.tcp_state", 0) + 1
        try:
            # Conversions only when needed: the probes send these types already.
            sk = ev["skaddr"]
            if type(sk) is not int:
                sk = int(sk)
            old, new = ev["old"], ev["new"]
            if type(old) is not str:
                old = str(old)
            if type(new) is not str:
                new = str(new)
            cpu_pid = ev.get("cpu_pid", -1)
            if type(cpu_pid) is not int:
                cpu_pid = int(cpu_pid)
        except (KeyError, TypeError, ValueError):
            n["rejected.kernel_event"] = n.get("rejected.kernel_event", 0) + 1
            return
        conn = self.live.get(sk)
        if conn is not None and old != conn.state:
            if old in ("CLOSE", "LISTEN"):
                # The socket memory was reused: its last transitions (-> CLOSE)
                # never reached us. End the old incarnation, start a new one.
                self._close(conn, conn.state_ns, lost_close=True)
                conn = None
            else:
                n["kernel.transition_gap"] = n.get("kernel.transition_gap", 0) + 1
        if conn is None:
            conn = self._open(sk, ts, old, new, ev, cpu_pid)
        else:
            end = self.experiment_end
            if (
                end is not None
                and conn.state in ("CLOSE_WAIT", "FIN_WAIT2")
                and conn.state_ns <= end < ts
            ):
                conn.stuck_in = conn.state
            st = conn.state
            live_states = self.live_states
            if st != "CLOSE" and st in live_states:
                live_states[st] -= 1
            hist = self.state_time.get(st)
            if hist is None:
                hist = self.state_time[st] = Log2Histogram()
            hist.add(ts - conn.state_ns)
        if conn.addr4 is None:
            self._learn_tuple(conn, ev)
        if len(conn.transitions) < MAX_TRANSITIONS:
            conn.transitions.append((ts, old, new, cpu_pid))
        else:
            conn.dropped_transitions += 1
        conn.last_old, conn.state, conn.state_ns = old, new, ts
        if new != "CLOSE":
            self.live_states[new] = self.live_states.get(new, 0) + 1
        row = {
            "ts": ts,
            "src": "kernel",
            "type": "tcp_state",
            "conn": conn.id,
            "old": old,
            "new": new,
            "skaddr": sk,
            "saddr": ev.get("saddr"),
            "sport": ev.get("sport"),
            "daddr": ev.get("daddr"),
            "dport": ev.get("dport"),
            "cpu_pid": cpu_pid,
            "cpu_comm": ev.get("cpu_comm"),
            # Filled in when the row is written; made here so the dict never grows.
            "t": None,
            "phase": None,
            "owner": None,
            "cpu_is_owner": None,
        }
        settle = self.settle
        settle.append((ts, row, conn))
        if len(settle) > self.max_settle:
            self.max_settle = len(settle)
        if new == "CLOSE":
            self._close(conn, ts)

    def _open(self, sk: int, ts: int, old: str, new: str, ev: dict[str, Any], cpu_pid: int) -> Conn:
        if new == "LISTEN":
            role = "listener"
        elif new == "SYN_SENT":
            role = "active"
        elif new == "SYN_RECV" or old in ("LISTEN", "SYN_RECV", "NEW_SYN_RECV"):
            role = "passive"
        else:
            role = "unknown"
        conn = Conn(
            id=next(self._ids),
            skaddr=sk,
            role=role,
            start_ns=ts,
            first_old=old,
            state=old,
            state_ns=ts,
            family=int(ev.get("family") or 0),
            first_cpu_pid=cpu_pid,
        )
        # connect() and listen() move a socket out of CLOSE in the caller's own
        # process context, so there the on-CPU pid is the owner.
        if old == "CLOSE" and cpu_pid in self.pid_actor:
            conn.set_owner(self.pid_actor[cpu_pid], cpu_pid, None, "cpu_pid")
        self.live[sk] = conn
        if len(self.live) > self.max_live:
            self.max_live = len(self.live)
        self._count("connections" if role != "listener" else "listeners")
        self._phase_count(ts, "connections" if role != "listener" else "listeners")
        return conn

    def _state_leave(self, conn: Conn, ts: int) -> None:
        st = conn.state
        if st != "CLOSE" and st in self.live_states:
            self.live_states[st] -= 1
        hist = self.state_time.get(st)
        if hist is None:
            hist = self.state_time[st] = Log2Histogram()
        hist.add(ts - conn.state_ns)

    def _learn_tuple(self, conn: Conn, ev: dict[str, Any]) -> None:
        if conn.addr4 is not None:
            return
        sport, dport = ev.get("sport") or 0, ev.get("dport") or 0
        if dport and conn.dest is None:
            conn.dest = (norm_addr(str(ev.get("daddr"))), int(dport))
        if conn.role == "listener":
            if sport:
                conn.addr4 = (norm_addr(str(ev.get("saddr"))), int(sport), "", 0)
                self.listeners[(conn.addr4[0], conn.addr4[1])] = conn
            return
        if not (sport and dport):
            return  # SYN_SENT before the ephemeral port is chosen
        t = (
            norm_addr(str(ev.get("saddr"))),
            int(sport),
            norm_addr(str(ev.get("daddr"))),
            int(dport),
        )
        conn.addr4 = t
        self.by_tuple.setdefault(t, []).append(conn)
        if conn.role == "passive":
            self.unaccepted[(t[2], t[3])] = conn
            # Until accept4 hands it out, the child sits in the listener's queue.
            lst = self.listeners.get((t[0], t[1])) or self.listeners.get(("0.0.0.0", t[1]))
            if lst is not None and lst.owner_pid is not None:
                conn.set_owner(lst.owner_actor, lst.owner_pid, None, "listener")

    def _close(self, conn: Conn, ts: int, lost_close: bool = False) -> None:
        self.live.pop(conn.skaddr, None)
        if lost_close:
            self._state_leave(conn, ts)
            self._count("kernel.close_not_seen")
            conn.close_seen = False
        conn.end_ns = ts
        if not lost_close and conn.last_old == "FIN_WAIT2" and conn.addr4 is not None:
            t = conn.addr4
            for peer in reversed(self.by_tuple.get((t[2], t[3], t[0], t[1]), [])):
                if peer.end_ns is None and peer.state == "CLOSE_WAIT":
                    conn.peer_wait, peer.twin = peer, conn
                    break
        if conn.role == "active" and conn.last_old == "SYN_SENT" and conn.close_seen:
            # A failed connect may never get a source port, so its tuple cannot
            # find it: index it by the process that dialled.
            self.failed.setdefault(conn.first_cpu_pid, deque()).append(conn)
        self.settle.append((ts, None, conn))

    # ---- kernel: accept4 and epoll_wait ------------------------------------

    def _on_accept(self, ts: int, ev: dict[str, Any]) -> None:
        self._count("kernel.accept")
        pid = int(ev.get("pid", -1))
        fd = int(ev.get("fd", -1))
        err = int(ev.get("errno") or 0)
        per = self.accepts.setdefault(pid, {})
        conn: Conn | None = None
        if fd >= 0 and not err:
            per["ok"] = per.get("ok", 0) + 1
            self._phase_count(ts, "accept.ok")
            peer = (norm_addr(str(ev.get("peer_addr") or "")), int(ev.get("peer_port") or 0))
            conn = self.unaccepted.pop(peer, None) if peer[1] else None
            if conn is None:
                conn = self.by_pidfd.get((pid, fd))
            if conn is not None:
                conn.accepted = True
                conn.set_owner(self.pid_actor.get(pid), pid, fd, "accept4")
                self._own_fd(pid, fd, conn)
            else:
                self._count("kernel.accept_unmatched")
        else:
            name = errno_name(err)
            per[name] = per.get(name, 0) + 1
            self._phase_count(ts, f"accept.{name}")
        row = {
            "ts": ts,
            "src": "kernel",
            "type": "accept",
            "conn": conn.id if conn else None,
            "pid": pid,
            "actor": self.pid_actor.get(pid),
            "tid": ev.get("tid"),
            "syscall": ev.get("syscall"),
            "lfd": ev.get("lfd"),
            "fd": fd,
            "error": errno_name(err) if err else None,
            "peer_addr": ev.get("peer_addr"),
            "peer_port": ev.get("peer_port"),
            "dur_ns": ev.get("dur_ns"),
        }
        self._emit(ts, row, None)

    def _on_epoll(self, ts: int, ev: dict[str, Any]) -> None:
        self._count("kernel.epoll")
        pid = int(ev.get("pid", -1))
        st = self.epoll.get(pid)
        if st is None:
            st = self.epoll[pid] = {
                "calls": 0,
                "errors": 0,
                "timeouts": 0,
                "ready_total": 0,
                "ready": ExactHistogram(),
                # tid -> [calls, returned empty, max ready, comm]: ZeroMQ's
                # own threads wait in epoll too, and say so in their names.
                "tids": {},
                "wait": Log2Histogram(),
            }
        st["calls"] += 1
        self._phase_count(ts, "epoll.calls")
        ready = int(ev.get("ready") or 0)
        if int(ev.get("errno") or 0):
            st["errors"] += 1
        elif ready == 0:
            st["timeouts"] += 1
        else:
            st["ready"].add(ready)
            st["ready_total"] += ready
        tids = st["tids"]
        tid = ev.get("tid")
        per = tids.get(tid)
        if per is None and len(tids) < MAX_TIDS:
            per = tids[tid] = [0, 0, 0, str(ev.get("comm") or "")]
        if per is not None:
            per[0] += 1
            if ready > per[2]:
                per[2] = ready
            elif ready == 0 and not ev.get("errno"):
                per[1] += 1
        st["wait"].add(int(ev.get("dur_ns") or 0))
        row = {
            "ts": ts,
            "src": "kernel",
            "type": "epoll",
            "pid": pid,
            "actor": self.pid_actor.get(pid),
            "tid": ev.get("tid"),
            "syscall": ev.get("syscall"),
            "epfd": ev.get("epfd"),
            "ready": ready,
            "error": errno_name(int(ev["errno"])) if ev.get("errno") else None,
            "timeout_ms": ev.get("timeout_ms"),
            "dur_ns": ev.get("dur_ns"),
        }
        self._emit(ts, row, None)

    # ---- application records -------------------------------------------------

    def _on_app(self, ts: int, rec: dict[str, Any]) -> None:
        n = self.n
        n["app.records"] = n.get("app.records", 0) + 1
        event = str(rec.get("event", ""))
        actor = rec.get("actor")
        pid = rec.get("pid")
        if isinstance(pid, int) and isinstance(actor, str) and pid not in self.pid_actor:
            self.pid_actor[pid] = actor
        self.app_events[event] = self.app_events.get(event, 0) + 1
        fd = rec.get("fd") if isinstance(rec.get("fd"), int) else None
        error = rec.get("error") or (errno_name(rec["errno"]) if rec.get("errno") else None)
        if error:
            self.errors[error] = self.errors.get(error, 0) + 1
            key = (str(error), event, str(actor), int(pid) if isinstance(pid, int) else -1)
            self.error_owner[key] = self.error_owner.get(key, 0) + 1
            self._phase_count(ts, f"errors.{error}")
        conn = self._find_conn(ts, event, rec, fd)
        if conn is not None and isinstance(pid, int):
            self._apply_app(conn, ts, event, rec, pid, fd, error)
        keys = _APP_COVERAGE.get(event)
        if keys is not None:
            n[keys[0]] = n.get(keys[0], 0) + 1
            if conn is not None:
                n[keys[1]] = n.get(keys[1], 0) + 1
        row = {"ts": ts, "src": "app", "type": event, "conn": conn.id if conn else None}
        # The record's own fields follow, in its order (a clash overwrites in place).
        row.update(rec)
        row.pop("event", None)
        row.pop("mono_ns", None)
        settle = self.settle
        settle.append((ts, row, None))
        if len(settle) > self.max_settle:
            self.max_settle = len(settle)

    def _find_conn(self, ts: int, event: str, rec: dict[str, Any], fd: int | None) -> Conn | None:
        laddr, lport = rec.get("laddr"), rec.get("lport")
        raddr, rport = rec.get("raddr"), rec.get("rport")
        pid = rec.get("pid")
        if event == "listen":
            if laddr is not None and lport:
                return self.listeners.get((norm_addr(str(laddr)), int(lport)))
            return None
        if lport and rport and laddr is not None and raddr is not None:
            t = (norm_addr(str(laddr)), int(lport), norm_addr(str(raddr)), int(rport))
            cands = self.by_tuple.get(t)
            if cands:
                # The newest incarnation that already existed at this time.
                for c in reversed(cands):
                    if c.start_ns <= ts:
                        return c
                return cands[0]
        if event == "connect_failed" and isinstance(pid, int):
            # The record follows its own failure at once; actors may log only
            # some failures, so match the newest one (to the same destination
            # when the record names it).
            q = self.failed.get(pid)
            dest = (norm_addr(str(raddr)), int(rport)) if raddr is not None and rport else None
            if q:
                for i in range(len(q) - 1, -1, -1):
                    c = q[i]
                    if dest is None or c.dest == dest:
                        del q[i]
                        return c
            return None
        if fd is not None and isinstance(pid, int) and event not in ("connect", "accept"):
            return self.by_pidfd.get((pid, fd))
        return None

    def _apply_app(
        self,
        conn: Conn,
        ts: int,
        event: str,
        rec: dict[str, Any],
        pid: int,
        fd: int | None,
        error: str | None,
    ) -> None:
        actor = rec.get("actor") if isinstance(rec.get("actor"), str) else None
        conn.action_counts[event] = conn.action_counts.get(event, 0) + 1
        if len(conn.actions) < MAX_ACTIONS:
            conn.actions.append((ts, event))
        if event in _SOCKET_ACTIONS:
            conn.set_owner(actor, pid, fd, f"app:{event}")
        elif conn.owner_pid is None:
            conn.set_owner(actor, pid, fd, f"app:{event}")
        if event == "accept":
            conn.accepted = True
            if conn.addr4 is not None:
                self.unaccepted.pop((conn.addr4[2], conn.addr4[3]), None)
        if error and event == "connect_failed":
            conn.error = str(error)
        if fd is not None:
            if event in ("connect", "accept"):
                self._own_fd(pid, fd, conn)
            elif event == "close":
                conn.app_closed = True
                self._release(conn)
                if self.by_pidfd.get((pid, fd)) is conn:
                    # The fd number is free for the next socket now.
                    del self.by_pidfd[(pid, fd)]

    def _own_fd(self, pid: int, fd: int, conn: Conn) -> None:
        self.by_pidfd[(pid, fd)] = conn
        if conn.held_by is not None:
            return
        conn.held_by = pid
        self.conns_by_owner[pid] = self.conns_by_owner.get(pid, 0) + 1
        if self.conns_by_owner[pid] > self.conns_by_owner_max.get(pid, 0):
            self.conns_by_owner_max[pid] = self.conns_by_owner[pid]

    def _release(self, conn: Conn) -> None:
        if conn.held_by is not None:
            n = self.conns_by_owner.get(conn.held_by, 0)
            self.conns_by_owner[conn.held_by] = max(n - 1, 0)
            conn.held_by = None

    # ---- stats ---------------------------------------------------------------

    def _on_stats(self, env: Envelope) -> None:
        # Recognised by shape, not by source name: `source` defaults to the
        # sender's name, which a scenario may choose freely.
        body = env.body
        ts = env.mono_ns
        for key in ("sample_ns", "mono_ns"):
            if isinstance(body.get(key), int):
                ts = body[key]
                break
        states = body.get("states")
        programs = body.get("programs")
        if isinstance(states, dict):
            vals = {str(k): int(v) for k, v in states.items() if isinstance(v, int)}
            self.observer_series.add(ts, vals)
            for name, v in vals.items():
                self._phase_peak(ts, f"states_peak.{name}", v)
            fds = body.get("fds")
            if isinstance(fds, dict):
                self.fd_series.add(
                    ts, {str(k): int(v) for k, v in fds.items() if isinstance(v, int)}
                )
        elif isinstance(programs, dict):
            for name, p in programs.items():
                if isinstance(p, dict):
                    # Counters are running totals: the latest sample is the total.
                    cur = self.probe_programs.setdefault(str(name), {"events": 0, "drops": 0})
                    for k in ("events", "drops"):
                        if isinstance(p.get(k), int):
                            cur[k] = max(cur[k], p[k])
            for h in body.get("epoll_hist") or []:
                if isinstance(h, dict) and isinstance(h.get("pid"), int):
                    ready = h.get("ready_log2")
                    if isinstance(ready, list):
                        self.epoll_kernel_hist[h["pid"]] = [int(x) for x in ready]
        else:
            self._on_progress(str(body["source"]), ts, body)

    def _on_progress(self, actor: str, ts: int, body: dict[str, Any]) -> None:
        # Senders deliver their own reports in order, but be safe against a
        # late batch: the newest report by time wins.
        if ts < self._progress_ts.get(actor, ts):
            return
        tree = numeric_tree(body)
        self.progress[actor] = tree
        self._progress_ts[actor] = ts
        for name, end in zip(self.phase_names, self.phase_ends, strict=True):
            if end is not None and ts > end:
                continue
            per = self.phase_progress.setdefault(name, {})
            old = per.get(actor)
            if old is None or old[0] <= ts:
                per[actor] = (ts, tree)

    # ---- output --------------------------------------------------------------

    def _emit(self, ts: int, row: dict[str, Any], conn: Conn | None) -> None:
        self.settle.append((ts, row, conn))
        if len(self.settle) > self.max_settle:
            self.max_settle = len(self.settle)

    def _settle(self, until: int) -> None:
        q = self.settle
        n = self.n
        t0 = self.t0
        pid_actor = self.pid_actor
        sink_event = self.sink.event
        phase_lo, phase_hi, phase = self._phase_span
        states = owned = 0  # tcp_state rows written, and those with an owner
        while q and q[0][0] <= until:
            ts, row, conn = q.popleft()
            if row is None:
                assert conn is not None
                peer = conn.peer_wait
                if peer is not None and peer.outcome is None:
                    conn.parked = True  # finished with its peer (see Conn)
                    n["parked_closers"] = n.get("parked_closers", 0) + 1
                    continue
                self._finish_conn(conn, at_end=False)
                phase_lo, phase_hi, phase = self._phase_span
                continue
            if t0:
                d = ts - t0
                row["t"] = d / 1e9 if -_EXACT_NS < d < _EXACT_NS else seconds(d)
            else:
                row["t"] = None
            if not phase_lo <= ts < phase_hi:
                self._phase(ts)
                phase_lo, phase_hi, phase = self._phase_span
            row["phase"] = phase
            if conn is not None:
                owner = conn.owner_cache or conn.owner_dict()
                row["owner"] = owner
                row["cpu_is_owner"] = owner is not None and row.get("cpu_pid") == owner["pid"]
                states += 1
                if owner is not None:
                    owned += 1
            elif row["src"] == "kernel":
                # accept4 and epoll_wait run in the caller's context: their pid is
                # real. A pid that is no actor's (the orchestrator's own ZeroMQ
                # sockets, say) is outside the lab, not an ownerless lab event.
                actor = pid_actor.get(row["pid"])
                row["actor"] = actor
                keys = _ROW_KEYS.get(row["type"]) or _row_keys(row["type"])
                if actor is None and pid_actor:
                    for k in keys[0]:
                        n[k] = n.get(k, 0) + 1
                else:
                    k = keys[1]
                    n[k] = n.get(k, 0) + 1
                    if actor is not None:
                        k = keys[2]
                        n[k] = n.get(k, 0) + 1
            sink_event(row)
        if states:
            n["coverage.kernel_tcp_state"] = n.get("coverage.kernel_tcp_state", 0) + states
        if owned:
            k = "coverage.kernel_tcp_state_owned"
            n[k] = n.get(k, 0) + owned

    def _outcome(self, conn: Conn, at_end: bool) -> str:
        seen_accepts = self.n.get("kernel.accept", 0) or self.app_events.get("accept", 0)
        if conn.role == "passive" and not conn.accepted and seen_accepts:
            return "never_accepted"
        if not conn.close_seen:
            return "unknown"
        stuck = conn.state if at_end else conn.stuck_in
        if stuck == "CLOSE_WAIT":
            return "stuck_close_wait"
        if stuck == "FIN_WAIT2":
            return "stuck_fin_wait2"
        if at_end:
            return "open_at_end"
        last = conn.last_old
        if conn.peer_wait is not None and conn.peer_wait.outcome in (
            "stuck_close_wait",
            "never_accepted",
        ):
            return "stuck_fin_wait2"
        if last == "SYN_SENT":
            if conn.error == "ECONNREFUSED":
                return "refused"
            if conn.error or conn.addr4 is None:
                return "failed_connect"
            return "refused"
        if last in _TIME_WAIT_FROM:
            return "time_wait"
        if last == "LAST_ACK":
            return "clean"
        return "reset"

    def _finish_conn(self, conn: Conn, at_end: bool) -> None:
        if conn.role == "listener":
            outcome = "open_at_end" if at_end else "closed"
            if conn.addr4 and self.listeners.get((conn.addr4[0], conn.addr4[1])) is conn:
                del self.listeners[(conn.addr4[0], conn.addr4[1])]
        else:
            outcome = self._outcome(conn, at_end)
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
            self._phase_count(conn.start_ns, f"outcomes.{outcome}")
            okey = (outcome, conn.owner_actor or "?", conn.owner_pid or -1, conn.role)
            self.outcome_owner[okey] = self.outcome_owner.get(okey, 0) + 1
            end = self._timewait_end(conn) or (
                conn.end_ns if conn.end_ns is not None else self.last_ns
            )
            hist = self.lifetimes.get(outcome)
            if hist is None:
                hist = self.lifetimes[outcome] = Log2Histogram()
            hist.add(max(end - conn.start_ns, 0))
            t = conn.addr4
            if outcome == "stuck_close_wait" and t is not None:
                self._stuck_cw.add((t[2], t[3], t[0], t[1]))
            elif outcome == "stuck_fin_wait2" and t is not None:
                self._stuck_fw2.add(t)
            elif (
                outcome == "failed_connect" and t is None and conn.error in (None, "EADDRNOTAVAIL")
            ):
                # No source port was ever chosen: inet_hash_connect found none.
                self.no_port_failures += 1
                self._phase_count(conn.start_ns, "kernel_errors.EADDRNOTAVAIL")
            self._count("coverage.kernel_connections")
            if conn.owner_pid is not None:
                self._count("coverage.kernel_connections_owned")
        conn.outcome = outcome
        self._unindex(conn)
        self.sink.connection(self._lifecycle(conn, at_end))
        twin = conn.twin
        if twin is not None and twin.parked:
            twin.parked = False
            self._finish_conn(twin, at_end=False)
        conn.twin = None

    def _unindex(self, conn: Conn) -> None:
        t = conn.addr4
        if t is not None and conn.role != "listener":
            cands = self.by_tuple.get(t)
            if cands is not None:
                if conn in cands:
                    cands.remove(conn)
                if not cands:
                    del self.by_tuple[t]
            if self.unaccepted.get((t[2], t[3])) is conn:
                del self.unaccepted[(t[2], t[3])]
        if conn.owner_pid is not None and conn.owner_fd is not None:
            key = (conn.owner_pid, conn.owner_fd)
            if self.by_pidfd.get(key) is conn:
                del self.by_pidfd[key]
        self._release(conn)
        if conn.role == "active" and conn.last_old == "SYN_SENT" and conn.close_seen:
            q = self.failed.get(conn.first_cpu_pid)
            if q is not None:
                if q and q[0] is conn:
                    q.popleft()
                else:
                    try:
                        q.remove(conn)
                    except ValueError:
                        pass  # already matched to its log record
                if not q:
                    del self.failed[conn.first_cpu_pid]

    def _timewait_end(self, conn: Conn) -> int | None:
        """When the peer of an orphaned closer finally closed (or the run ended)."""
        peer = conn.peer_wait
        if peer is None:
            return None
        return peer.end_ns if peer.end_ns is not None else self.last_ns

    def _lifecycle(self, conn: Conn, at_end: bool) -> dict[str, Any]:
        end = conn.end_ns if conn.end_ns is not None else self.last_ns
        states = []
        trans = conn.transitions
        for i, (ts, _old, new, cpu) in enumerate(trans):
            nxt = trans[i + 1][0] if i + 1 < len(trans) else end
            if new == "CLOSE":
                continue
            states.append({"state": new, "start_ns": ts, "dur_ns": nxt - ts, "cpu_pid": cpu})
        tw_end = self._timewait_end(conn)
        if tw_end is not None and conn.end_ns is not None:
            # Not a tracepoint state: the timewait socket that took over waits
            # in FIN_WAIT2 for the peer's FIN (its close), or to the run's end.
            states.append(
                {
                    "state": "FIN_WAIT2",
                    "start_ns": conn.end_ns,
                    "dur_ns": tw_end - conn.end_ns,
                    "cpu_pid": None,
                    "timewait": True,
                }
            )
        t = conn.addr4
        return {  # one lifecycle
            "id": conn.id,
            "kind": "listener" if conn.role == "listener" else "connection",
            "role": conn.role,
            "outcome": conn.outcome,
            "laddr": t[0] if t else None,
            "lport": t[1] if t else None,
            "raddr": t[2] if t and conn.role != "listener" else None,
            "rport": t[3] if t and conn.role != "listener" else None,
            "dest": list(conn.dest) if conn.dest else None,
            "family": conn.family,
            "skaddr": conn.skaddr,
            "start_ns": conn.start_ns,
            "end_ns": conn.end_ns,
            "t_start": seconds(conn.start_ns - self.t0) if self.t0 else None,
            "duration_ns": end - conn.start_ns,
            "closed_in_run": not at_end,
            "timewait_from": conn.last_old
            if conn.outcome in ("time_wait", "stuck_fin_wait2") and conn.close_seen
            else None,
            "first_old": conn.first_old,
            "last_state": conn.state,
            "owner": conn.owner_dict(),
            "first_cpu_pid": conn.first_cpu_pid,
            "states": states,
            "transitions_dropped": conn.dropped_transitions,
            "accepted": conn.accepted,
            "app_closed": conn.app_closed,
            "error": conn.error,
            "app": dict(conn.action_counts),
            # The first app actions in order, [ts_ns, event] (capped).
            "actions": [list(a) for a in conn.actions],
            "phase": self._phase(conn.start_ns),
        }

    # ---- helpers -------------------------------------------------------------

    def _count(self, key: str, n: int = 1) -> None:
        self.n[key] = self.n.get(key, 0) + n

    def _phase(self, ts: int) -> str | None:
        lo, hi, name = self._phase_span
        if lo <= ts < hi:
            return name
        starts = self.phase_starts
        i = bisect.bisect_right(starts, ts) - 1
        name = self.phase_names[i] if i >= 0 else None
        # Events come in time order: the next one is most likely in the same phase.
        self._phase_span = (
            starts[i] if i >= 0 else -(1 << 63),
            starts[i + 1] if i + 1 < len(starts) else 1 << 63,
            name,
        )
        return name

    def _phase_count(self, ts: int, path: str) -> None:
        name = self._phase(ts)
        if name is None:
            return
        node = self.phase_counts.setdefault(name, {})
        split = _PATHS.get(path)
        if split is None:
            split = _PATHS[path] = path.split(".")
        for p in split[:-1]:
            node = node.setdefault(p, {})
        leaf = split[-1]
        node[leaf] = node.get(leaf, 0) + 1

    def _phase_peak(self, ts: int, path: str, value: int) -> None:
        name = self._phase(ts)
        if name is None:
            return
        node = self.phase_counts.setdefault(name, {})
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = max(node.get(leaf, 0), value)

    # ---- end -----------------------------------------------------------------

    def finish(self) -> None:
        """Flush everything: the reorder heap, the grace queue, the live sockets."""
        self._run(self.reorder.drain())
        self._settle(1 << 63)
        for c in sorted(self.live.values(), key=lambda c: c.start_ns):
            self._finish_conn(c, at_end=True)
        self.live.clear()
        # Peers of leaked sockets: a stuck FIN_WAIT2 facing a stuck CLOSE_WAIT.
        self.peers_of_stuck = len(self._stuck_cw & self._stuck_fw2)
