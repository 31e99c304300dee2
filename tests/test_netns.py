"""The lab namespace: sysctls land inside it, never on the host."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from pyroute2 import netns

from bus.endpoints import BUS_DIR_PREFIX, bus_dir_owner, make_run_dir
from lab.netns import PREFIX, LabNamespace, NamespaceError, clean_stale
from lab.stale import clean_stale_bus_dirs

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
    bad = LabNamespace("bad", {"fs.file-max": 10})
    with pytest.raises(NamespaceError, match="not per network namespace"):
        bad.create()
    assert bad.name not in netns.listnetns()  # its own: others' tests may make a "-bad" now


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


def test_stale_bus_directory_of_dead_run_is_removed_live_ones_kept(tmp_path: Path) -> None:
    """A kill -9'd orchestrator's bus directory goes; a live run's stays,
    and so does anything that is not a 0700 bus directory."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f"{BUS_DIR_PREFIX}{dead.pid}-abc"
    live = tmp_path / f"{BUS_DIR_PREFIX}{os.getppid()}-abc"  # pytest's parent: alive
    open_dir = tmp_path / f"{BUS_DIR_PREFIX}{dead.pid}-shared"
    unnamed = tmp_path / f"{BUS_DIR_PREFIX}xyz"
    for d in (stale, live, unnamed):
        d.mkdir(mode=0o700)
        (d / "events.sock").touch()
    open_dir.mkdir()
    open_dir.chmod(0o755)
    assert clean_stale_bus_dirs(tmp_path) == [stale]
    assert not stale.exists()
    assert live.exists() and open_dir.exists() and unnamed.exists()


def test_bus_directory_names_its_owner() -> None:
    """make_run_dir's name carries the pid the sweep checks."""
    path = make_run_dir()
    try:
        assert bus_dir_owner(path) == os.getpid()
        assert path.stat().st_mode & 0o777 == 0o700
    finally:
        path.rmdir()
