"""lab/netstat.py: the kernel's TCP counters of one namespace."""

from __future__ import annotations

import socket

import pytest
from pyroute2 import netns

from lab import netstat
from lab.netns import LabNamespace

SNMP = """Ip: Forwarding DefaultTTL
Ip: 1 64
Tcp: RtoAlgorithm RtoMin InSegs OutSegs RetransSegs InErrs
Tcp: 1 200 7 9 2 0
TcpExt: SyncookiesSent TCPWinProbe TCPTimeouts
TcpExt: 0 5 3
"""


def test_parse_takes_the_wanted_counters_by_name() -> None:
    assert netstat.parse(SNMP) == {
        "Tcp.InSegs": 7,
        "Tcp.OutSegs": 9,
        "Tcp.RetransSegs": 2,
        "TcpExt.TCPWinProbe": 5,
        "TcpExt.TCPTimeouts": 3,
    }


@pytest.mark.root
@pytest.mark.netns
def test_counters_are_the_namespaces_own() -> None:
    """A fresh namespace starts at 0 and counts only its own segments."""
    with LabNamespace("netstat") as ns:
        before = netstat.read(ns.name)
        assert before["Tcp.OutSegs"] == 0
        netns.pushns(ns.name)
        try:
            srv = socket.create_server(("127.0.0.1", 0))
            cli = socket.create_connection(srv.getsockname())
        finally:
            netns.popns()
        conn, _ = srv.accept()
        cli.sendall(b"x" * 1000)
        assert conn.recv(1000)
        for s in (cli, conn, srv):
            s.close()
        after = netstat.read(ns.name)
    # SYN, SYN-ACK, ACK, data, its ACK at least; nothing lost on loopback.
    assert after["Tcp.OutSegs"] >= 5
    assert after["Tcp.RetransSegs"] == 0
    assert after["TcpExt.TCPRetransFail"] == 0  # the name this kernel uses
