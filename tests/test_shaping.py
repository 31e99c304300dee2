"""Link shaping measured on real traffic across the lab link: loss makes the
sender retransmit, a rate bounds throughput, and delay is either done
(netem) or refused in one line (this CI kernel has no netem)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from lab_helpers import ROOT, TCPLAB

from lab.hostlab import HostLab
from lab.hosts import Hosts, HostSpec
from lab.link import Link, LinkSpec
from lab.scenario import load
from lab.shaping import Shape, ShapingError, check_supported, support

pytestmark = [pytest.mark.root, pytest.mark.netns]

# The console script beside this interpreter: .venv here, /opt/tcplab-venv in the kernel VM.
PORT = 8098

SINK = f"""
import socket
s = socket.create_server(("198.18.0.2", {PORT}))
print("up", flush=True)
c, _ = s.accept()
while c.recv(1 << 16):
    pass
"""

# Sends N bytes, waits until the peer has acknowledged all of them, then
# prints the sender's own tcp_info (getsockopt) and the elapsed time.
SEND = f"""
import json, socket, sys, time
from probes.sockdiag import tcp_info_of
n = int(sys.argv[1])
c = socket.create_connection(("198.18.0.2", {PORT}), timeout=60)
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, b"cubic")
t0 = time.monotonic()
c.sendall(bytes(n))
while tcp_info_of(c)["unacked"]:
    time.sleep(0.005)
took = time.monotonic() - t0
print(json.dumps({{"took_s": took, **tcp_info_of(c)}}))
c.close()
"""


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    h = Hosts("shape", [HostSpec("a"), HostSpec("b")]).create()
    yield h
    h.destroy()


def transfer(hosts: Hosts, nbytes: int) -> dict[str, object]:
    sink = subprocess.Popen(
        hosts["b"].command([sys.executable, "-c", SINK]), stdout=subprocess.PIPE, text=True
    )
    try:
        assert sink.stdout is not None and sink.stdout.readline() == "up\n"
        out = hosts["a"].run(
            [sys.executable, "-c", SEND, str(nbytes)], capture_output=True, cwd=ROOT, timeout=120
        )
        assert out.returncode == 0, out.stderr
        return dict(json.loads(out.stdout))
    finally:
        sink.kill()
        sink.wait()


def test_loss_makes_the_sender_retransmit(hosts: Hosts) -> None:
    """5% loss on a's egress: segments go missing and a retransmits them; the
    drop program counts what it dropped (offloads off: one drop, one segment)."""
    link = Link(LinkSpec(hosts=("a", "b"), egress={"a": Shape(loss_pct=5)}), hosts.names())
    link.create()
    try:
        info = transfer(hosts, 2_000_000)
        drops = link.shaper.counters()["a"]
    finally:
        link.destroy()
    assert link.offloads is False
    assert drops["dropped"] > 0 and drops["seen"] > drops["dropped"]
    assert int(str(info["total_retrans"])) > 0, (info, drops)
    # about 5% of ~1400 segments: far from none, far from all
    assert 0.01 < drops["dropped"] / drops["seen"] < 0.15


def test_rate_bounds_throughput(hosts: Hosts) -> None:
    """tbf at 20 Mbit/s: 2.5 MB cannot cross faster than that (an unshaped
    veth moves gigabits). An upper bound only: a slow machine cannot fail it."""
    link = Link(LinkSpec(hosts=("a", "b"), egress={"a": Shape(rate_mbit=20)}), hosts.names())
    link.create()
    try:
        info = transfer(hosts, 2_500_000)
    finally:
        link.destroy()
    mbit_s = 2_500_000 * 8 / float(str(info["took_s"])) / 1e6
    assert mbit_s < 20 * 1.5, mbit_s


def test_vanished_peer_drops_everything_mid_run(hosts: Hosts) -> None:
    """A phase's loss 100% on b: a's connection attempts get no answer."""
    link = Link(LinkSpec(hosts=("a", "b")), hosts.names()).create()
    try:
        link.reshape({"b": {"loss_pct": 100.0}})
        sink = subprocess.Popen(
            hosts["b"].command([sys.executable, "-c", SINK]), stdout=subprocess.PIPE, text=True
        )
        assert sink.stdout is not None and sink.stdout.readline() == "up\n"
        out = hosts["a"].run(
            [
                sys.executable,
                "-c",
                (
                    f"import socket\ntry:\n    socket.create_connection(('198.18.0.2', {PORT}), "
                    "timeout=1.5)\nexcept TimeoutError:\n    print('no answer')"
                ),
            ],
            capture_output=True,
            timeout=30,
        )
        sink.kill()
        sink.wait()
        assert out.stdout.strip() == "no answer"
        assert link.shaper.counters()["b"]["dropped"] >= 1  # the SYN-ACKs
    finally:
        link.destroy()


def test_delay_is_done_by_netem_or_refused_in_one_line(hosts: Hosts) -> None:
    """Where netem exists (the kernel VM) 20 ms each way shows in the RTT;
    where it does not (6.18 here) asking for delay is one clear error."""
    shape = Shape(delay_ms=20)
    if support()["delay_ms"] is None:
        with pytest.raises(ShapingError) as e:
            check_supported([shape])
        assert "\n" not in str(e.value) and "netem" in str(e.value)
        with pytest.raises(ShapingError):
            Link(
                LinkSpec(hosts=("a", "b"), egress={"a": shape, "b": shape}), hosts.names()
            ).create()
        return
    link = Link(LinkSpec(hosts=("a", "b"), egress={"a": shape, "b": shape}), hosts.names())
    link.create()
    try:
        info = transfer(hosts, 100_000)
    finally:
        link.destroy()
    assert int(str(info["min_rtt"])) >= 40_000  # microseconds: 20 ms each way


def test_cli_refuses_delay_without_netem_in_one_line(tmp_path: Path) -> None:
    """`tcplab run` of a scenario with delay on a kernel without netem: one
    line that names netem, a failing exit code, no namespace made."""
    scenario = tmp_path / "slow.toml"
    scenario.write_text(
        'name = "slow"\nsummary = "s"\n[lab.hosts.a]\n[lab.hosts.b]\n[lab.link]\n'
        'delay_ms = 20\n[[actors]]\nname = "server"\nrole = "server"\nhost = "b"\n'
        '[[phases]]\nname = "p"\nduration_s = 1\n'
    )
    if support()["delay_ms"] is not None:
        # A kernel with netem (the VM): the same scenario passes the check.
        HostLab(load(scenario)).check()
        return
    out = subprocess.run(
        [TCPLAB, "run", str(scenario), "--quiet", "--runs-dir", str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if "netem" in line]
    assert len(lines) == 1 and "delay_ms" in lines[0], out.stderr
    assert "Traceback" not in out.stderr


def tbf_rates(hosts: Hosts, host: str) -> list[int]:
    """The rate (bytes/s) of every tbf qdisc on the host's end of the link."""
    from pyroute2 import IPRoute

    with IPRoute(netns=hosts[host].name) as ipr:
        qdiscs = ipr.get_qdiscs(ipr.link_lookup(ifname="lab0")[0])
        return [
            q.get_attr("TCA_OPTIONS").get_attr("TCA_TBF_PARMS")["rate"]
            for q in qdiscs
            if q.get_attr("TCA_KIND") == "tbf"
        ]


def test_rate_from_a_scenario_changes_mid_run_and_goes_away(hosts: Hosts) -> None:
    """Rates come from TOML as floats; a phase may change or remove them."""
    link = Link(LinkSpec(hosts=("a", "b"), egress={"a": Shape(rate_mbit=10.0)}), hosts.names())
    link.create()
    try:
        assert tbf_rates(hosts, "a") == [10_000_000 // 8]
        link.reshape({"a": {"rate_mbit": 50.0}})
        assert tbf_rates(hosts, "a") == [50_000_000 // 8]
        link.reshape({"a": {"rate_mbit": 0.0}})
        assert tbf_rates(hosts, "a") == []
        assert tbf_rates(hosts, "b") == []
    finally:
        link.destroy()


def test_doctor_says_how_each_knob_is_done() -> None:
    """`tcplab doctor` lists every shaping knob with how this kernel does it,
    or that it needs netem."""
    out = subprocess.run(
        [TCPLAB, "doctor", "--no-self-check"], capture_output=True, text=True, timeout=120
    )
    lines = out.stdout.split("lab link shaping:\n", 1)[1].splitlines()[:4]
    knobs = dict(line.strip().split(": ", 1) for line in lines)
    assert set(knobs) == {"loss_pct", "rate_mbit", "delay_ms", "jitter_ms"}
    assert "drop.bpf.c" in knobs["loss_pct"] and knobs["rate_mbit"] == "tbf"
    netem = support()["delay_ms"] is not None
    assert (knobs["delay_ms"] == "netem") == netem
    assert ("needs netem" in knobs["jitter_ms"]) != netem
