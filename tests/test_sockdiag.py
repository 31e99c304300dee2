"""Socket snapshots: tcp_info read through sock_diag, checked against the
kernel's own rules (MSS = MTU - 40, - 12 with timestamps) and against `ss`
on the very same sockets."""

from __future__ import annotations

import re
import socket
import struct
import subprocess
from collections.abc import Iterator

import pytest
from lab_helpers import in_ns

from lab.hosts import Hosts, HostSpec
from lab.link import Link, LinkSpec
from probes.sockdiag import TCP_INFO, DiagQuery, SockDiag, parse_tcp_info, port_filter

PORT = 8097


def test_wscale_byte_is_split_snd_low_rcv_high() -> None:
    """The kernel packs tcpi_snd_wscale in the low nibble, rcv in the high one."""
    raw = bytearray(TCP_INFO.size)
    raw[6] = (9 << 4) | 7
    info = parse_tcp_info(bytes(raw)).as_dict()
    assert (info["snd_wscale"], info["rcv_wscale"]) == (7, 9)


def test_short_tcp_info_from_an_older_kernel_is_padded() -> None:
    raw = struct.pack("=8B4I", 1, 0, 0, 0, 0, 7, 0, 0, 200000, 40000, 1448, 536)
    info = parse_tcp_info(raw).as_dict()
    assert (info["snd_mss"], info["rcv_mss"], info["rwnd_limited"]) == (1448, 536, 0)
    assert info["options"] == ["timestamps", "sack", "wscale"]


def test_port_filter_bytecode_shape() -> None:
    """Two ports: four tests (sport, dport each), three JMPs between them."""
    code = port_filter([80, 443])
    assert len(code) == 4 * 8 + 3 * 4


def connect(
    hosts: Hosts, keepalive: bool = False
) -> tuple[socket.socket, socket.socket, socket.socket]:
    """A server socket in b, a client in a, connected across the link (sockets
    made while this thread is in a namespace belong to it)."""
    server = in_ns(hosts["b"].name, lambda: socket.create_server(("198.18.0.2", PORT)))
    client = in_ns(hosts["a"].name, lambda: socket.socket())
    if keepalive:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30)
    client.connect(("198.18.0.2", PORT))
    peer, _ = server.accept()
    client.sendall(b"x" * 5000)
    got = 0
    while got < 5000:
        got += len(peer.recv(65536))
    return server, client, peer


def snapshot(ns: str) -> list[SockDiag]:
    def query() -> list[SockDiag]:
        with DiagQuery() as q:
            return [s for s in q.sockets([PORT]) if s.state == 1]

    return list(in_ns(ns, query))


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    h = Hosts("diag", [HostSpec("a"), HostSpec("b")]).create()
    yield h
    h.destroy()


@pytest.mark.root
@pytest.mark.netns
@pytest.mark.parametrize("mtu", [1500, 1280, 9000])
def test_mss_follows_the_link_mtu(hosts: Hosts, mtu: int) -> None:
    """MSS = MTU - 20 (IP) - 20 (TCP) - 12 (timestamps on), or - 40 with them off."""
    link = Link(LinkSpec(hosts=("a", "b"), mtu=1500), hosts.names()).create()
    link.set_mtu(mtu)
    socks = connect(hosts)
    (s,) = snapshot(hosts["a"].name)
    assert s.tcp_info is not None and "timestamps" in s.tcp_info.options
    assert (s.tcp_info.pmtu, s.tcp_info.advmss, s.tcp_info.snd_mss) == (mtu, mtu - 52, mtu - 52)
    for sock in socks:
        sock.close()
    # Timestamps off on one side: neither uses them, 12 more bytes per segment.
    hosts["a"].run(["sysctl", "-qw", "net.ipv4.tcp_timestamps=0"], check=True)
    socks = connect(hosts)
    (s,) = snapshot(hosts["a"].name)
    assert s.tcp_info is not None and "timestamps" not in s.tcp_info.options
    assert (s.tcp_info.advmss, s.tcp_info.snd_mss) == (mtu - 40, mtu - 40)
    for sock in socks:
        sock.close()


def ss_lines(ns: str) -> dict[tuple[str, int], str]:
    """`ss -tino` in the namespace: (local address, local port) -> its two lines."""
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "ss", "-tinoH", "state", "established"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = out.splitlines()
    table = {}
    for head, detail in zip(lines[::2], lines[1::2], strict=True):
        local = head.split()[2]
        addr, port = local.rsplit(":", 1)
        table[(addr, int(port))] = head + " " + detail
    return table


def field(text: str, name: str) -> str:
    m = re.search(rf"\b{name}:(\S+)", text)
    assert m, (name, text)
    return m.group(1)


@pytest.mark.root
@pytest.mark.netns
def test_tcp_info_agrees_with_ss_on_the_same_sockets(hosts: Hosts) -> None:
    """Every field `ss -tino` prints that we read too, for both ends of a
    connection across the link: wscale, mss, rcvmss, advmss, pmtu, cwnd,
    options, congestion control, the keepalive timer."""
    Link(LinkSpec(hosts=("a", "b")), hosts.names()).create()
    socks = connect(hosts, keepalive=True)
    try:
        for host in ("a", "b"):
            ns = hosts[host].name
            ours = snapshot(ns)
            theirs = ss_lines(ns)
            assert len(ours) == len(theirs) == 1
            for s in ours:
                text = theirs[(s.laddr, s.lport)]
                assert s.tcp_info is not None
                info = s.tcp_info.as_dict()
                assert field(text, "wscale") == f"{info['snd_wscale']},{info['rcv_wscale']}"
                assert int(field(text, "mss")) == info["snd_mss"]
                assert int(field(text, "rcvmss")) == info["rcv_mss"]
                assert int(field(text, "advmss")) == info["advmss"]
                assert int(field(text, "pmtu")) == info["pmtu"]
                assert int(field(text, "cwnd")) == info["snd_cwnd"]
                words = text.split()
                assert ("ts" in words) == ("timestamps" in info["options"])
                assert ("sack" in words) == ("sack" in info["options"])
                assert s.congestion in words
                timer = re.search(r"timer:\((\w+),", text)
                assert (timer.group(1) if timer else None) == (
                    "keepalive" if s.timer == "keepalive" else s.timer
                )
            assert {s.timer for s in ours} == ({"keepalive"} if host == "a" else {None})
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.root
def test_kernel_filters_by_port() -> None:
    """Only sockets with the asked port come back, listeners included."""
    wanted = socket.create_server(("127.0.0.1", 0))
    other = socket.create_server(("127.0.0.1", 0))
    try:
        port, other_port = wanted.getsockname()[1], other.getsockname()[1]
        with DiagQuery() as q:
            ports = {(s.lport, s.rport) for s in q.sockets([port])}
            both = {s.lport for s in q.sockets([port, other_port])}
        assert ports == {(port, 0)}
        assert both == {port, other_port}
    finally:
        wanted.close()
        other.close()
