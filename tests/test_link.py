"""Two-host labs: hosts are namespaces, the link is a real veth pair in
198.18.0.0/15, and a scenario's hosts/link tables are checked at load."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from lab_helpers import ROOT, bpf_programs_of
from pyroute2 import IPRoute, netns

from lab.hosts import Hosts, HostSpec
from lab.link import IFNAME, Link, LinkSpec
from lab.netns import PREFIX, clean_stale
from lab.scenario import ScenarioError, load

BASE = """
name = "t"
summary = "t"
[lab.hosts.a]
[lab.hosts.b]
{link}
[[actors]]
name = "server"
role = "server"
host = "b"
[[phases]]
name = "p"
duration_s = 1
{phase}
"""


def write(tmp_path: Path, link: str = "[lab.link]", phase: str = "") -> Path:
    path = tmp_path / "t.toml"
    path.write_text(BASE.format(link=link, phase=phase))
    return path


def test_scenario_hosts_and_link_defaults(tmp_path: Path) -> None:
    """Two hosts and a bare [lab.link]: MTU 1500, 198.18.0.1/.2, no shaping."""
    s = load(write(tmp_path))
    assert [h.name for h in s.hosts] == ["a", "b"]
    assert s.link is not None
    assert (s.link.hosts, s.link.mtu) == (("a", "b"), 1500)
    assert s.link.addresses == ("198.18.0.1/24", "198.18.0.2/24")
    assert s.actors[0].host == "b"


def test_scenario_shaping_both_ways_and_per_direction(tmp_path: Path) -> None:
    link = "[lab.link]\nloss_pct = 1\n[lab.link.egress.b]\nrate_mbit = 10\n"
    phase = "link = { egress = { b = { loss_pct = 100 } } }"
    s = load(write(tmp_path, link, phase))
    assert s.link is not None
    assert s.link.egress["a"].loss_pct == 1 and s.link.egress["a"].rate_mbit == 0
    assert s.link.egress["b"].loss_pct == 1 and s.link.egress["b"].rate_mbit == 10
    assert s.phases[0].link == {"b": {"loss_pct": 100.0}}


@pytest.mark.parametrize(
    ("link", "phase", "message"),
    [
        ('[lab.link]\naddresses = ["10.0.0.1/24", "10.0.0.2/24"]', "", "outside 198.18.0.0/15"),
        ('[lab.link]\naddresses = ["198.18.0.1/24", "198.18.1.2/24"]', "", "share one subnet"),
        ("[lab.link]\nmtu = 100", "", "`mtu` must be"),
        ("[lab.link]\nloss_pct = 120", "", "`loss_pct` must be from 0 to 100"),
        ("[lab.link]\nlos_pct = 1", "", "unknown key `los_pct`"),
        ("[lab.link]\n[lab.link.egress.c]\nloss_pct = 1", "", "no host 'c'"),
        ("", "link = { loss_pct = 100 }", "this scenario has none"),
    ],
)
def test_scenario_bad_link_is_one_clear_error(
    tmp_path: Path, link: str, phase: str, message: str
) -> None:
    with pytest.raises(ScenarioError, match=message):
        load(write(tmp_path, link, phase))


def test_scenario_actor_must_name_a_declared_host(tmp_path: Path) -> None:
    path = write(tmp_path)
    path.write_text(path.read_text().replace('host = "b"', 'host = "z"'))
    with pytest.raises(ScenarioError, match="needs `host = ` one of a, b"):
        load(path)


@pytest.mark.root
@pytest.mark.netns
def test_link_joins_two_hosts_with_its_mtu_and_goes_away() -> None:
    """A TCP connection crosses the veth; each end has the MTU and address asked."""
    hosts = Hosts("linktest", [HostSpec("a"), HostSpec("b")]).create()
    try:
        spec = LinkSpec(hosts=("a", "b"), mtu=1400)
        Link(spec, hosts.names()).create()
        for host, addr in (("a", "198.18.0.1"), ("b", "198.18.0.2")):
            with IPRoute(netns=hosts[host].name) as ipr:
                link = ipr.get_links(ipr.link_lookup(ifname=IFNAME)[0])[0]
                assert link.get_attr("IFLA_MTU") == 1400
                addrs = [
                    a.get_attr("IFA_ADDRESS")
                    for a in ipr.get_addr(index=link["index"], family=socket.AF_INET)
                ]
                assert addrs == [addr]
        server = subprocess.Popen(
            hosts["b"].command(
                [
                    sys.executable,
                    "-c",
                    (
                        "import socket; s = socket.create_server(('198.18.0.2', 8099)); "
                        "print('up', flush=True); c, _ = s.accept(); c.sendall(b'hi'); c.close()"
                    ),
                ]
            ),
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None and server.stdout.readline() == "up\n"
        got = hosts["a"].run(
            [
                sys.executable,
                "-c",
                (
                    "import socket; c = socket.create_connection(('198.18.0.2', 8099), timeout=5); "
                    "print(c.recv(10).decode())"
                ),
            ],
            capture_output=True,
            timeout=10,
        )
        assert got.stdout.strip() == "hi", got.stderr
        server.wait(timeout=5)
    finally:
        hosts.destroy()
    assert not [n for n in netns.listnetns() if n.startswith(f"{PREFIX}{os.getpid()}-linktest")]


@pytest.mark.root
@pytest.mark.netns
def test_stale_sweep_removes_hosts_of_a_dead_run() -> None:
    """Host namespaces carry the orchestrator's pid like the lab namespace does."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    names = [f"{PREFIX}{dead.pid}-two-a", f"{PREFIX}{dead.pid}-two-b"]
    for name in names:
        netns.create(name)
    try:
        removed = clean_stale()
        assert set(names) <= set(removed)
        assert not set(names) & set(netns.listnetns())
    finally:
        for name in names:
            if name in netns.listnetns():
                netns.remove(name)


@pytest.mark.root
@pytest.mark.netns
def test_load_generators_accept_the_link_peer_and_nothing_else() -> None:
    """Inside a host, the far end of the lab link is a lab target; others are
    not (the check the bomber and the multiplexer make before any connect)."""
    hosts = Hosts("bombtest", [HostSpec("a"), HostSpec("b")]).create()
    try:
        Link(LinkSpec(hosts=("a", "b")), hosts.names()).create()
        code = (
            "import sys; from actors.targets import check_target\n"
            "for t in sys.argv[1:]:\n"
            "    try:\n        check_target(t, 'bomb'); print(t, 'ok')\n"
            "    except Exception as e:\n        print(t, 'refused')\n"
        )
        out = hosts["a"].run(
            [sys.executable, "-c", code, "198.18.0.2", "198.18.9.9", "192.0.2.1", "127.0.0.1"],
            capture_output=True,
            cwd=ROOT,
            timeout=30,
        )
        assert out.stdout.split("\n")[:4] == [
            "198.18.0.2 ok",
            "198.18.9.9 refused",
            "192.0.2.1 refused",
            "127.0.0.1 ok",
        ], out.stderr
    finally:
        hosts.destroy()


def test_lab_addresses_are_never_routed() -> None:
    """198.18.0.0/15 is the benchmarking range: not global, so never on the internet."""
    import ipaddress

    from lab.link import LAB_NET

    assert not LAB_NET.is_global
    assert ipaddress.ip_address("198.19.255.255") in LAB_NET


@pytest.mark.parametrize("module", ["bomber", "multiplexer"])
def test_load_generators_refuse_a_target_outside_the_lab(module: str) -> None:
    """Outside any lab namespace only loopback is allowed: one line, exit 2."""
    out = subprocess.run(
        [sys.executable, "-m", f"actors.{module}", "--target", "192.0.2.7:80"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(f"{module}: error: refusing to") and "192.0.2.7" in line


@pytest.mark.root
@pytest.mark.netns
def test_hosts_own_their_tcp_hash_table() -> None:
    """Made from inside a lab namespace, a host has buckets of its own
    (tcp_ehash_entries > 0; negative means the host's shared table), and
    the machine's own setting is left as it was."""
    from lab.hosts import CHILD_EHASH, EHASH_ENTRIES
    from lab.netns import LabNamespace

    if not CHILD_EHASH.exists():  # before 5.19: every namespace shares one table
        hosts = Hosts("ehash", [HostSpec("a")]).create()
        hosts.destroy()
        return
    before = CHILD_EHASH.read_text()
    parent = LabNamespace("ehash").create()
    try:
        hosts = Hosts("ehash", [HostSpec("a")]).create(parent)
        try:
            assert int(hosts["a"].read_sysctl("net.ipv4.tcp_ehash_entries")) == EHASH_ENTRIES
        finally:
            hosts.destroy()
        assert int(parent.read_sysctl("net.ipv4.tcp_ehash_entries")) < 0
    finally:
        parent.destroy()
    assert CHILD_EHASH.read_text() == before


def drop_programs() -> dict[int, str]:
    """The drop programs this process has loaded: id -> name."""
    out = {}
    for prog in bpf_programs_of(os.getpid()):
        shown = subprocess.run(
            ["bpftool", "-j", "prog", "show", "id", str(prog)],
            capture_output=True,
            text=True,
            check=True,
        )
        name = json.loads(shown.stdout).get("name", "")
        if name.startswith("drop_"):
            out[prog] = name
    return out


@pytest.mark.root
@pytest.mark.bpf
@pytest.mark.netns
def test_a_later_loss_has_its_drop_program_loaded_with_the_link() -> None:
    """A phase's loss attaches the drop program loaded when the link was
    made: compiled at the phase, it kept the orchestrator from the bus for
    seconds on a loaded machine, and every actor and the probes ended with
    'orchestrator lost' (a lossy-link run, 19:53 UTC)."""
    hosts = Hosts("droptest", [HostSpec("a"), HostSpec("b")]).create()
    link = Link(LinkSpec(hosts=("a", "b")), hosts.names(), shaped=True, lossy={"a"})
    try:
        link.create()
        loaded = drop_programs()
        assert sorted(loaded.values()) == ["drop_0"]  # a's end is slot 0
        assert link.shaper.counters() == {}  # not attached: no loss yet
        link.reshape({"a": {"loss_pct": 100}})
        assert drop_programs() == loaded  # attached, not compiled again
        # Attached on a's end: counted there. Not necessarily 0 packets: a
        # fresh link sends packets of its own in its first seconds (IPv6
        # duplicate address detection, MLD reports, router solicitations:
        # tcpdump on it; 1 counted here in 2 of 17 runs); at 100% each one
        # the program saw, it dropped.
        counters = link.shaper.counters()
        assert set(counters) == {"a"}
        assert counters["a"]["dropped"] == counters["a"]["seen"], counters
    finally:
        link.destroy()
        hosts.destroy()
    assert drop_programs() == {}
