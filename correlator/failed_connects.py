"""Failed connects waiting for the connect_failed record that names them.

A failed connect may never get a source port, so its tuple cannot find it:
it is queued by the process that dialled (its CLOSE->SYN_SENT runs in that
process's context, so first_cpu_pid is the caller). The record follows its
own failure at once; actors may log only some failures, so a record takes
the newest one (to the same destination when the record names it).
"""

from __future__ import annotations

from collections import deque

from correlator.lifecycles import Conn

# pid that called connect() -> its failed connects not yet matched, oldest first.
Failed = dict[int, deque[Conn]]


def add(failed: Failed, conn: Conn) -> None:
    failed.setdefault(conn.first_cpu_pid, deque()).append(conn)


def match(failed: Failed, pid: int, dest: tuple[str, int] | None) -> Conn | None:
    """The newest failed connect of `pid` (to `dest` if given), taken off its queue."""
    q = failed.get(pid)
    if q:
        for i in range(len(q) - 1, -1, -1):
            c = q[i]
            if dest is None or c.dest == dest:
                del q[i]
                return c
    return None


def forget(failed: Failed, conn: Conn) -> None:
    """A failed connect leaving the indexes unmatched."""
    q = failed.get(conn.first_cpu_pid)
    if q is not None:
        try:
            q.remove(conn)
        except ValueError:
            pass  # already matched to its log record
        if not q:
            del failed[conn.first_cpu_pid]
