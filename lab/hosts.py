"""Hosts: a scenario's named machines, one network namespace each.

A host is a lab namespace (tcplab-<pid>-<scenario>-<host>, so the stale
sweep of lab.netns removes it after a crash like any other) with its own
sysctls.

Congestion control is not set here: a namespace other than the host's may
only pick a default from tcp_allowed_congestion_control, which is a host
setting (here "reno bbr", so new namespaces run bbr). The actors set the
algorithm per socket instead (`--congestion`, root may pick any).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lab.netns import LabNamespace


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

    def create(self) -> Hosts:
        made: list[LabNamespace] = []
        try:
            for ns in self.namespaces.values():
                made.append(ns.create())
        except BaseException:
            for ns in made:
                ns.destroy()
            raise
        return self

    def __getitem__(self, host: str) -> LabNamespace:
        return self.namespaces[host]

    def names(self) -> dict[str, str]:
        """host -> namespace name."""
        return {h: ns.name for h, ns in self.namespaces.items()}

    def destroy(self) -> None:
        for ns in self.namespaces.values():
            ns.destroy()
