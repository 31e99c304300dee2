"""The lab's network namespace: one per run, with the scenario's sysctls.

A port bomb narrows ip_local_port_range and turns tcp_tw_reuse off; doing
that on the host would break the machine's own connections, so every run
gets a namespace of its own and the sysctls are written inside it only.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Any

from pyroute2 import IPRoute, netns

PREFIX = "tcplab-"


class NamespaceError(RuntimeError):
    """The lab namespace could not be made or configured."""


def _sysctl_path(key: str) -> Path:
    if not key.startswith("net."):
        raise NamespaceError(
            f"sysctl {key!r} is not per network namespace: only net.* keys belong in a lab"
        )
    return Path("/proc/sys") / key.replace(".", "/")


def _owner_pid(name: str) -> int | None:
    # Names are tcplab-<orchestrator pid>-<label>: the pid tells whether the
    # run that made it is still alive.
    parts = name[len(PREFIX) :].split("-", 1)
    return int(parts[0]) if parts and parts[0].isdigit() else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale() -> list[str]:
    """Remove lab namespaces whose orchestrator is gone (after a crash)."""
    removed = []
    for name in netns.listnetns():
        pid = _owner_pid(name) if name.startswith(PREFIX) else None
        if pid is not None and pid != os.getpid() and not pid_alive(pid):
            netns.remove(name)
            removed.append(name)
    return removed


class LabNamespace:
    """A named network namespace with loopback up and net.* sysctls set."""

    def __init__(self, label: str, sysctls: dict[str, Any] | None = None) -> None:
        self.name = f"{PREFIX}{os.getpid()}-{label}"
        self.sysctls = dict(sysctls or {})

    def create(self) -> LabNamespace:
        if self.name in netns.listnetns():
            netns.remove(self.name)
        try:
            netns.create(self.name)
        except OSError as e:
            raise NamespaceError(
                f"cannot create network namespace {self.name}: {e} (tcplab needs root)"
            ) from e
        try:
            self._in_namespace(self._configure)
        except BaseException:
            self.destroy()
            raise
        return self

    def _configure(self) -> None:
        with IPRoute() as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        for key, value in self.sysctls.items():
            text = " ".join(str(v) for v in value) if isinstance(value, list) else str(value)
            try:
                _sysctl_path(key).write_text(text)
            except OSError as e:
                raise NamespaceError(f"sysctl {key}={text!r} in {self.name}: {e}") from e

    def _in_namespace(self, fn: Any) -> Any:
        # setns() moves only the calling thread; /proc/sys/net/* files bind to
        # the opener's namespace, so writes here land in the lab, not the host.
        netns.pushns(self.name)
        try:
            return fn()
        finally:
            netns.popns()

    def read_sysctl(self, key: str) -> str:
        return str(self._in_namespace(lambda: _sysctl_path(key).read_text().strip()))

    def command(self, argv: list[str]) -> list[str]:
        """argv wrapped to run inside the namespace (exec keeps the pid)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(argv), text=True, **kwargs)

    def destroy(self) -> None:
        if self.name in netns.listnetns():
            netns.remove(self.name)

    def __enter__(self) -> LabNamespace:
        return self.create()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.destroy()
