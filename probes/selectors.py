"""`tcplab watch --comm NAME --cgroup PATH`: which events to print.

As with bcc's tools and Inspektor Gadget, a command name or a cgroup picks
processes; here they pick the events whose process is one of them: the
caller of a syscall event, the owner of a socket's transition or stuck
entry (probes/owners.py; an unowned transition cannot be told, so it is
left out while a selector is on). Applied in user space to what the probes
print: the probes still see everything, so owners keep being learned.
A process's cgroup is read once from /proc/PID/cgroup (cgroup v2's
"0::/path" line) and remembered, a bounded number of pids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MEMO_LIMIT = 65536


def cgroup2_root() -> str:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or
    /sys/fs/cgroup/unified on a hybrid systemd machine)."""
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 2 and fields[2] == "cgroup2":
                    return fields[1]
    except OSError:
        pass
    return "/sys/fs/cgroup"


def cgroup_of(pid: int) -> str | None:
    """The cgroup v2 path of a process ("/system.slice/x.service"), None if gone."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


def cgroup_path(arg: str) -> str:
    """--cgroup as given (a directory of the mounted v2 hierarchy, or a path
    inside it) as the path /proc/PID/cgroup shows."""
    path = arg.rstrip("/") or "/"
    root = cgroup2_root().rstrip("/")
    if path == root or path.startswith(root + "/"):
        path = path[len(root) :] or "/"
    return path


class Selector:
    def __init__(self, comms: tuple[str, ...] = (), cgroup: str | None = None) -> None:
        self.comms = set(comms)
        self.cgroup = cgroup_path(cgroup) if cgroup else None
        self._cgroups: dict[int, str | None] = {}

    @property
    def active(self) -> bool:
        return bool(self.comms) or self.cgroup is not None

    def keep(self, e: dict[str, Any]) -> bool:
        if not self.active:
            return True
        if "owner_pid" in e:  # a transition or a stuck socket: its owner
            pid, comm = e["owner_pid"], e["owner_comm"]
        else:
            pid, comm = e.get("pid"), e.get("comm")
        if pid is None:
            return False
        if self.comms and comm not in self.comms:
            return False
        return self.cgroup is None or self._in_cgroup(pid)

    def _in_cgroup(self, pid: int) -> bool:
        if pid not in self._cgroups:
            if len(self._cgroups) >= MEMO_LIMIT:
                self._cgroups.clear()
            self._cgroups[pid] = cgroup_of(pid)
        path = self._cgroups[pid]
        assert self.cgroup is not None
        return path is not None and (
            self.cgroup == "/" or path == self.cgroup or path.startswith(self.cgroup + "/")
        )
