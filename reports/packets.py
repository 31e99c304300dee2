"""Handshakes read back from a run's packets.pcap (lab/capture.py), with dpkt.

dpkt: a small, maintained pcap and TCP/IP parser, pure Python and fast
enough for a lab run's thousands of packets; scapy does far more (and
imports for seconds). Each connection's three first packets are told the
way tcpdump prints them, as the seed's `make inspect-tcp` showed them:

    [S] mss 1460,sackOK,TS,nop,wscale 7  ->  [S.] mss 1460,...  ->  [.]

with the Wireshark display filter that isolates the connection.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import dpkt

from lab.capture import PCAP

MAX_CONNECTIONS = 50  # the report's table shows the first ones; the pcap keeps all

# TCP option kinds as tcpdump names them (RFC 793, 7323, 2018).
OPT_NAMES = {
    dpkt.tcp.TCP_OPT_NOP: "nop",
    dpkt.tcp.TCP_OPT_SACKOK: "sackOK",
    dpkt.tcp.TCP_OPT_TIMESTAMP: "TS",
    dpkt.tcp.TCP_OPT_MSS: "mss",
    dpkt.tcp.TCP_OPT_WSCALE: "wscale",
    dpkt.tcp.TCP_OPT_SACK: "sack",
}


def syn_options(tcp: dpkt.tcp.TCP) -> dict[str, int]:
    """The MSS and window scale a SYN offers (absent: not in the dict)."""
    out = {}
    for kind, data in dpkt.tcp.parse_opts(tcp.opts):
        if kind == dpkt.tcp.TCP_OPT_MSS and len(data) == 2:
            out["mss"] = int.from_bytes(data, "big")
        elif kind == dpkt.tcp.TCP_OPT_WSCALE and len(data) == 1:
            out["wscale"] = data[0]
    return out


def options_text(tcp: dpkt.tcp.TCP) -> str:
    """The options of a segment as tcpdump prints them (`mss 1460,sackOK,TS,nop,wscale 7`)."""
    out = []
    for kind, data in dpkt.tcp.parse_opts(tcp.opts):
        name = OPT_NAMES.get(kind, f"opt-{kind}")
        if kind == dpkt.tcp.TCP_OPT_MSS:
            name += f" {int.from_bytes(data, 'big')}"
        elif kind == dpkt.tcp.TCP_OPT_WSCALE:
            name += f" {data[0]}"
        if kind != dpkt.tcp.TCP_OPT_EOL:
            out.append(name)
    return ",".join(out)


def flags_text(tcp: dpkt.tcp.TCP) -> str:
    f = tcp.flags
    text = "".join(
        c
        for bit, c in (
            (dpkt.tcp.TH_SYN, "S"),
            (dpkt.tcp.TH_FIN, "F"),
            (dpkt.tcp.TH_RST, "R"),
            (dpkt.tcp.TH_PUSH, "P"),
        )
        if f & bit
    )
    return f"[{text}{'.' if f & dpkt.tcp.TH_ACK else ''}]"


def wireshark_filter(a: str, pa: int, b: str, pb: int) -> str:
    return f"ip.addr=={a} && tcp.port=={pa} && ip.addr=={b} && tcp.port=={pb}"


def handshakes(run_dir: Path) -> dict[str, Any] | None:
    """Each connection's first three packets from packets.pcap; None without one."""
    path = Path(run_dir) / PCAP
    if not path.exists():
        return None
    conns: dict[tuple[str, int, str, int], dict[str, Any]] = {}
    packets = 0
    try:
        with open(path, "rb") as f:
            for ts, buf in dpkt.pcap.Reader(f):
                packets += 1
                _add(conns, float(ts), buf)
    except (ValueError, dpkt.dpkt.NeedData):
        pass  # a capture cut short ends in half a record: keep what came before
    rows = [c for c in conns.values() if c["packets"]]
    return {
        "file": PCAP,
        "packets": packets,
        "connections": len(rows),
        "handshakes": rows[:MAX_CONNECTIONS],
        "all_syns": [{"syn": c["syn"]} for c in rows],
    }


def _add(conns: dict[tuple[str, int, str, int], dict[str, Any]], ts: float, buf: bytes) -> None:
    try:
        eth = dpkt.ethernet.Ethernet(buf)
    except dpkt.dpkt.UnpackError:
        return
    ip = eth.data
    if not isinstance(ip, dpkt.ip.IP) or not isinstance(ip.data, dpkt.tcp.TCP):
        return
    tcp = ip.data
    src, dst = socket.inet_ntoa(ip.src), socket.inet_ntoa(ip.dst)
    syn_only = tcp.flags & (dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK) == dpkt.tcp.TH_SYN
    key = (src, tcp.sport, dst, tcp.dport)
    rkey = (dst, tcp.dport, src, tcp.sport)
    if syn_only:
        # A new SYN on a 4-tuple starts a new connection (a reused port after TIME_WAIT).
        conns.pop(key, None)
        conns[key] = {
            "client": f"{src}:{tcp.sport}",
            "server": f"{dst}:{tcp.dport}",
            "filter": wireshark_filter(src, tcp.sport, dst, tcp.dport),
            "packets": [],
            "t0": ts,
            "syn": syn_options(tcp),
        }
    conn = conns.get(key) or conns.get(rkey)
    if conn is None or len(conn["packets"]) >= 3:
        return
    arrow = ">" if conns.get(key) is conn else "<"
    conn["packets"].append(
        {
            "t_ms": round((ts - conn["t0"]) * 1000, 3),
            "dir": arrow,
            "flags": flags_text(tcp),
            "options": options_text(tcp),
            "win": tcp.win,
            "len": len(tcp.data),
        }
    )


def wire_counts(packets: dict[str, Any] | None) -> dict[str, Any]:
    """Counts for the expectations: `wire.connections` (SYNs seen), `wire.syn_mss`
    and `wire.syn_wscale` (the smallest offered in any SYN)."""
    if not packets:
        return {}
    syns = [c["syn"] for c in packets["all_syns"]]
    return {
        "wire": {
            "connections": packets["connections"],
            "syn_mss": min((s["mss"] for s in syns if "mss" in s), default=0),
            "syn_wscale": min((s["wscale"] for s in syns if "wscale" in s), default=0),
        }
    }


def sentences(packets: dict[str, Any] | None) -> list[str]:
    if not packets or not packets["handshakes"]:
        return []
    first = packets["handshakes"][0]
    steps = " -> ".join(f"{p['flags']} {p['options']}".strip() for p in first["packets"])
    return [
        f"On the wire (packets.pcap, {packets['packets']} packets, {packets['connections']} "
        f"connections): {first['client']} to {first['server']}: {steps}. "
        f"Wireshark: {first['filter']}"
    ]
