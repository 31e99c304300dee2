"""The lab namespace: sysctls land inside it, never on the host."""

from __future__ import annotations

import subprocess

import pytest
from pyroute2 import netns

from lab.netns import PREFIX, LabNamespace, NamespaceError, clean_stale

pytestmark = [pytest.mark.root, pytest.mark.netns]


def test_sysctls_apply_inside_only() -> None:
    """A narrowed port range and tw_reuse=0 hold in the lab, the host keeps its own."""
    host_range = open("/proc/sys/net/ipv4/ip_local_port_range").read().split()
    sysctls = {"net.ipv4.ip_local_port_range": [40000, 40009], "net.ipv4.tcp_tw_reuse": 0}
    with LabNamespace("sysctl", sysctls) as ns:
        assert ns.read_sysctl("net.ipv4.ip_local_port_range").split() == ["40000", "40009"]
        assert ns.read_sysctl("net.ipv4.tcp_tw_reuse") == "0"
        out = ns.run(["cat", "/proc/sys/net/ipv4/ip_local_port_range"], capture_output=True)
        assert out.stdout.split() == ["40000", "40009"]
    assert open("/proc/sys/net/ipv4/ip_local_port_range").read().split() == host_range
    assert ns.name not in netns.listnetns()


def test_loopback_is_up_inside() -> None:
    """Actors talk over the lab's own loopback, so it must be up."""
    with LabNamespace("lo") as ns:
        out = ns.run(["ip", "-o", "link", "show", "lo"], capture_output=True, check=True)
        assert "UP" in out.stdout.split("<", 1)[1].split(">", 1)[0].split(",")


def test_host_wide_sysctl_is_refused() -> None:
    """Only net.* keys are per namespace; anything else would change the host."""
    with pytest.raises(NamespaceError, match="not per network namespace"):
        LabNamespace("bad", {"fs.file-max": 10}).create()
    assert not [n for n in netns.listnetns() if n.endswith("-bad")]


def test_stale_namespace_of_dead_run_is_removed() -> None:
    """A namespace left by a crashed orchestrator goes at the next start."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    name = f"{PREFIX}{dead.pid}-crashed"
    netns.create(name)
    try:
        assert name in clean_stale()
        assert name not in netns.listnetns()
    finally:
        if name in netns.listnetns():
            netns.remove(name)
