"""Process trees and their listening ports, read from /proc.

`tcplab trace` follows a program's children by looking again every few
hundred milliseconds (a child that lives shorter than that is missed: the
probes filter by pid, and this is how the pids are learnt), and points
tcp_state at the ports the tree listens on.
"""

from __future__ import annotations

import os
from pathlib import Path

# /proc/net/tcp's state column for LISTEN.
TCP_LISTEN = "0A"


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may hold spaces and parentheses: the fields follow the last ')'.
    return int(stat.rsplit(")", 1)[1].split()[1])


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def tree(roots: set[int]) -> set[int]:
    """The live processes among `roots` and all their descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = _ppid(int(entry))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry))
    found: set[int] = set()
    todo = [r for r in roots if alive(r)]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def listening_ports(pids: set[int]) -> set[int]:
    """TCP ports the processes listen on (read in each one's own network namespace)."""
    ports: set[int] = set()
    for pid in pids:
        inodes = _socket_inodes(pid)
        if not inodes:
            continue
        for table in ("tcp", "tcp6"):
            try:
                rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
            except OSError:
                continue
            for row in rows:
                cols = row.split()  # sl local_address rem_address st ... inode
                if len(cols) > 9 and cols[3] == TCP_LISTEN and cols[9] in inodes:
                    ports.add(int(cols[1][-4:], 16))
    return ports
