"""TIME_WAIT counts for `tcplab watch --timewait`.

The state tracepoint never reports TIME_WAIT (the active closer's socket
goes FIN_WAIT2 -> CLOSE while a timewait sock takes its place), so watch
asks sock_diag (probes/sockdiag.py), in its own network namespace, on the
watched ports when given, once a second.
"""

from __future__ import annotations

from collections.abc import Iterable

from bus.records import TCP_STATES
from probes.sockdiag import DiagQuery

TIME_WAIT = TCP_STATES.index("TIME_WAIT")
INTERVAL_S = 1.0


def timewait_count(q: DiagQuery, ports: Iterable[int] = ()) -> int:
    return sum(s.state == TIME_WAIT for s in q.sockets(ports, info=False))
