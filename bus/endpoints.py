"""Where the bus lives: one private directory per run, two ipc:// sockets.

The orchestrator binds PULL on `events` (actors and probes PUSH: PUSH blocks
at the high-water mark instead of dropping, PUB would drop silently) and
ROUTER on `control` (actors connect DEALER).
"""

from __future__ import annotations

import ipaddress
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit


class EndpointError(ValueError):
    """A bus address tcplab refuses to use."""


@dataclass(frozen=True)
class Endpoints:
    events: str
    control: str

    def as_args(self) -> list[str]:
        return ["--events", self.events, "--control", self.control]


BUS_DIR_PREFIX = "tcplab-bus-"


def make_run_dir(parent: str | None = None) -> Path:
    """A fresh directory for the run's sockets, readable by its owner only.

    Named tcplab-bus-<pid>-*: the pid tells a later run whether the process
    that made it is gone (lab.stale sweeps those)."""
    path = Path(tempfile.mkdtemp(prefix=f"{BUS_DIR_PREFIX}{os.getpid()}-", dir=parent))
    os.chmod(path, 0o700)
    return path


def bus_dir_owner(path: Path) -> int | None:
    """The pid in a bus directory's name, or None for any other name."""
    if not path.name.startswith(BUS_DIR_PREFIX):
        return None
    pid = path.name[len(BUS_DIR_PREFIX) :].split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


def ipc_endpoints(run_dir: Path) -> Endpoints:
    return Endpoints(f"ipc://{run_dir}/events.sock", f"ipc://{run_dir}/control.sock")


def check_endpoint(address: str, allow_remote: bool = False) -> str:
    """Accept ipc:// anywhere and tcp:// on loopback (other hosts need CURVE)."""
    parts = urlsplit(address)
    if parts.scheme == "ipc":
        return address
    if parts.scheme != "tcp":
        raise EndpointError(f"bus address {address!r}: use ipc://PATH or tcp://127.0.0.1:PORT")
    host = parts.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not allow_remote:
        raise EndpointError(
            f"bus address {address!r} is not loopback: tcplab's bus is unauthenticated, "
            "keep it on ipc:// or 127.0.0.1"
        )
    return address
