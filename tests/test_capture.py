"""packets.pcap: tcpdump on the lab link, read back with dpkt into the
handshake lines the seed's `make inspect-tcp` shows."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from lab_helpers import in_ns

from lab.capture import Capture, CaptureSpec
from lab.hosts import Hosts, HostSpec
from lab.link import Link, LinkSpec
from reports.packets import handshakes, wire_counts

PORT = 8096


@pytest.mark.root
@pytest.mark.netns
@pytest.mark.parametrize("mtu", [1500, 9000])
def test_capture_shows_the_handshake_as_tcpdump_prints_it(tmp_path: Path, mtu: int) -> None:
    """SYN and SYN-ACK offer MTU - 40 (the MSS before options), SACK,
    timestamps and a window scale; the third packet is a bare ACK."""
    hosts = Hosts("cap", [HostSpec("a"), HostSpec("b")]).create()
    try:
        Link(LinkSpec(hosts=("a", "b"), mtu=mtu), hosts.names()).create()
        capture = Capture(CaptureSpec("a", 128), hosts["a"], tmp_path).start()
        server = in_ns(hosts["b"].name, lambda: socket.create_server(("198.18.0.2", PORT)))
        client = in_ns(hosts["a"].name, lambda: socket.socket())
        client.connect(("198.18.0.2", PORT))
        peer, _ = server.accept()
        client.sendall(b"hello\n")
        assert peer.recv(100) == b"hello\n"
        for s in (client, peer, server):
            s.close()
        # tcpdump writes each packet as it reads it (-U); wait for the file
        # to hold the handshake and the data before stopping it.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            seen = handshakes(tmp_path)
            if seen and seen["packets"] >= 5:
                break
            time.sleep(0.05)
        capture.stop()
    finally:
        hosts.destroy()
    assert capture.packets is not None and capture.packets >= 5
    packets = handshakes(tmp_path)
    assert packets is not None and packets["connections"] == 1
    (conn,) = packets["handshakes"]
    syn, synack, ack = conn["packets"]
    assert (syn["flags"], synack["flags"], ack["flags"]) == ("[S]", "[S.]", "[.]")
    assert (syn["dir"], synack["dir"], ack["dir"]) == (">", "<", ">")
    for p in (syn, synack):
        opts = p["options"].split(",")
        assert opts[0] == f"mss {mtu - 40}"
        assert "sackOK" in opts and "TS" in opts and opts[-1].startswith("wscale ")
    assert ack["options"] == "nop,nop,TS"
    assert conn["client"].startswith("198.18.0.1:") and conn["server"] == f"198.18.0.2:{PORT}"
    port = conn["client"].split(":")[1]
    assert conn["filter"] == (
        f"ip.addr==198.18.0.1 && tcp.port=={port} && ip.addr==198.18.0.2 && tcp.port=={PORT}"
    )
    assert wire_counts(packets)["wire"]["syn_mss"] == mtu - 40


def test_no_pcap_no_packets(tmp_path: Path) -> None:
    assert handshakes(tmp_path) is None
    assert wire_counts(None) == {}


def test_truncated_pcap_keeps_what_came_before(tmp_path: Path) -> None:
    """A run cut short may leave half a record at the end of the file."""
    import dpkt

    with open(tmp_path / "packets.pcap", "wb") as f:
        w = dpkt.pcap.Writer(f)
        tcp = dpkt.tcp.TCP(
            sport=40000, dport=80, flags=dpkt.tcp.TH_SYN, off=6, opts=b"\x02\x04\x05\xb4"
        )
        ip = dpkt.ip.IP(
            src=socket.inet_aton("198.18.0.1"),
            dst=socket.inet_aton("198.18.0.2"),
            p=dpkt.ip.IP_PROTO_TCP,
            data=tcp,
        )
        w.writepkt(dpkt.ethernet.Ethernet(data=ip, type=dpkt.ethernet.ETH_TYPE_IP), ts=1.0)
        f.write(b"\x01\x02\x03")
    packets = handshakes(tmp_path)
    assert packets is not None and packets["packets"] == 1
    assert packets["handshakes"][0]["packets"][0]["options"] == "mss 1460"
