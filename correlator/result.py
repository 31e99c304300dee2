"""What correlating a run found: the one object the summary reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from correlator.stats import ExactHistogram, Log2Histogram, Series


@dataclass
class EpollFigures:
    """epoll_wait calls of one process, from per-call events."""

    calls: int = 0
    errors: int = 0
    timeouts: int = 0
    ready_total: int = 0
    ready: ExactHistogram = field(default_factory=ExactHistogram)
    # tid -> [calls, returned empty, max ready, comm]: ZeroMQ's own threads
    # wait in epoll too, and say so in their names.
    tids: dict[int, list[Any]] = field(default_factory=dict)
    wait: Log2Histogram = field(default_factory=Log2Histogram)

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


@dataclass
class Result:
    """Counts, aggregates and samples of one correlated run.

    `n` holds the flat counters by dotted name: kernel.<probe> (events seen),
    coverage.* (what was joined), rejected.* (unusable items),
    kernel.close_not_seen, kernel.transition_gap, connections, listeners.
    """

    t0: int  # the run's start (run.json), 0 when unknown
    n: dict[str, int]
    pid_actor: dict[int, str]  # every pid known as an actor's
    phase_names: list[str]
    phase_starts: list[int]
    # Connections.
    outcomes: dict[str, int]
    outcome_owner: dict[tuple[str, str, int, str], int]  # (outcome, actor, pid, role) -> n
    peers_of_stuck: int  # stuck FIN_WAIT2 sockets facing a stuck CLOSE_WAIT
    no_port_failures: int  # connects that ended without ever getting a port
    max_live: int
    conns_by_owner_max: dict[int, int]  # pid -> most connections held at once
    lifetimes: dict[str, Log2Histogram]  # per outcome
    state_time: dict[str, Log2Histogram]  # per state left
    # Application records.
    app_events: dict[str, int]
    errors: dict[str, int]
    error_owner: dict[tuple[str, str, str, int], int]  # (error, event, actor, pid) -> n
    progress: dict[str, dict[str, Any]]  # actor -> its last progress report
    # Syscalls.
    accepts: dict[int, dict[str, int]]  # pid -> {"ok": n, errno name: n}
    epoll: dict[int, EpollFigures]
    epoll_kernel_hist: dict[int, list[int]]  # pid -> in-kernel log2 ready histogram
    # Per phase.
    phase_counts: dict[str, dict[str, Any]]
    phase_progress: dict[str, dict[str, tuple[int, dict[str, Any]]]]
    # Samples over time.
    kernel_series: Series  # live sockets per state, from the transitions
    observer_series: Series  # the observer's sock_diag counts (TIME_WAIT included)
    fd_series: Series
    probe_programs: dict[str, dict[str, int]]  # probe -> {"events", "drops"}
    # Time order.
    first_ns: int | None
    last_ns: int
    late_events: int
    reorder_max_held: int
    settle_max_held: int
