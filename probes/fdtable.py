"""Who holds the listening sockets that exist when `tcplab watch` starts.

A listener opened before the probes attached never shows its CLOSE ->
LISTEN transition, so a connection still in its accept queue would have no
owner. At start, watch asks sock_diag for the listening sockets (their
inode) and reads which process holds each inode from /proc/PID/fd, as
`ss -p` and lsof do: one pass over /proc, never per event. Only the
caller's network namespace is asked (sock_diag answers for it alone).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from bus.records import TCP_STATES
from probes.sockdiag import DiagQuery

PROC = Path("/proc")
_LISTEN = TCP_STATES.index("LISTEN")


def socket_holders(inodes: set[int]) -> dict[int, tuple[int, str, int]]:
    """inode -> (pid, comm, fd) of the first process found holding it."""
    out: dict[int, tuple[int, str, int]] = {}
    for entry in os.scandir(PROC):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            fds = os.scandir(f"/proc/{pid}/fd")
        except OSError:  # gone, or a kernel thread
            continue
        with fds:
            for fd in fds:
                try:
                    target = os.readlink(fd.path)
                except OSError:
                    continue
                if not target.startswith("socket:["):
                    continue
                inode = int(target[8:-1])
                if inode in inodes and inode not in out:
                    try:
                        comm = (PROC / str(pid) / "comm").read_text().strip()
                    except OSError:
                        comm = "?"
                    out[inode] = (pid, comm, int(fd.name))
    return out


def listening_owners() -> dict[int, tuple[int, str, int]]:
    """Local port -> (pid, comm, listening fd) for this namespace's TCP listeners."""
    with DiagQuery() as q:
        listeners = [
            s for s in q.sockets(info=False, families=(socket.AF_INET, socket.AF_INET6))
            if s.state == _LISTEN
        ]  # fmt: skip
    holders = socket_holders({s.inode for s in listeners})
    return {s.lport: holders[s.inode] for s in listeners if s.inode in holders}
