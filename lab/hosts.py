"""Hosts: a scenario's named machines, one network namespace each.

A host is a lab namespace (tcplab-<pid>-<scenario>-<host>, so the stale
sweep of lab.netns removes it after a crash like any other) with its own
sysctls.

Each host gets a TCP hash table of its own when the kernel allows it (5.19+:
net.ipv4.tcp_child_ehash_entries, read from the namespace that makes the
child, so the hosts are made from inside the run's lab namespace, never by
changing the host's setting). Otherwise every namespace shares one table,
and a sock_diag snapshot of a host walks every socket on the machine — tens
of thousands while other runs bomb ports.

Congestion control is not set here: a namespace other than the host's may
only pick a default from tcp_allowed_congestion_control, which is a host
setting (here "reno bbr", so new namespaces run bbr). The actors set the
algorithm per socket instead (`--congestion`, root may pick any).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import netns

from lab.netns import LabNamespace

CHILD_EHASH = Path("/proc/sys/net/ipv4/tcp_child_ehash_entries")
EHASH_ENTRIES = 65536  # buckets per host (a power of two): 512 KiB, ample for C10k on a link


@dataclass(frozen=True)
class HostSpec:
    name: str
    sysctls: dict[str, Any] = field(default_factory=dict)


class Hosts:
    """The namespaces of a scenario's hosts, made and removed together."""

    def __init__(self, scenario: str, specs: list[HostSpec]) -> None:
        self.namespaces: dict[str, LabNamespace] = {}
        for spec in specs:
            self.namespaces[spec.name] = LabNamespace(f"{scenario}-{spec.name}", spec.sysctls)

    def create(self, parent: LabNamespace | None = None) -> Hosts:
        """Make every host; from inside `parent` (a lab namespace) when given,
        so that each host owns its TCP hash table."""
        made: list[LabNamespace] = []
        if parent is not None:
            netns.pushns(parent.name)
        try:
            if parent is not None and CHILD_EHASH.exists():
                # Opened while in `parent`: the lab's setting, not the host's.
                CHILD_EHASH.write_text(str(EHASH_ENTRIES))
            for ns in self.namespaces.values():
                made.append(ns.create())
        except BaseException:
            for ns in made:
                ns.destroy()
            raise
        finally:
            if parent is not None:
                netns.popns()
        return self

    def __getitem__(self, host: str) -> LabNamespace:
        return self.namespaces[host]

    def names(self) -> dict[str, str]:
        """host -> namespace name."""
        return {h: ns.name for h, ns in self.namespaces.items()}

    def destroy(self) -> None:
        for ns in self.namespaces.values():
            ns.destroy()
