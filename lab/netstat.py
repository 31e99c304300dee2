"""The kernel's own TCP counters of a namespace (/proc/net/snmp, /proc/net/netstat).

Read at the start and the end of a two-host run, per host (lab/hostlab.py),
so that the report can check its tracepoint counts against the kernel's:
Tcp RetransSegs against the retransmits tcp:tcp_retransmit_skb saw (with
TcpExt TCPRetransFail, the counted ones whose transmit failed), Tcp OutSegs
as the segments sent, TcpExt TCPWinProbe as the zero-window probes,
TCPFastRetrans and TCPSlowStartRetrans as the segments retransmitted from
the retransmit queue in Recovery and in Loss (the rest of RetransSegs comes
from the retransmit timer and tail loss probes: TCPTimeouts, TCPLossProbes).
The files show the namespace of the thread that reads them
(/proc/thread-self/net), so the read runs inside the namespace.
"""

from __future__ import annotations

from pathlib import Path

from pyroute2 import netns

FILES = (Path("/proc/thread-self/net/snmp"), Path("/proc/thread-self/net/netstat"))
WANTED = {
    "Tcp": ("InSegs", "OutSegs", "RetransSegs"),
    "TcpExt": (
        "TCPWinProbe",
        "TCPTimeouts",
        "TCPLossProbes",
        "TCPFastRetrans",
        "TCPSlowStartRetrans",
        "TCPRetransFail",
    ),
}


def parse(text: str) -> dict[str, int]:
    """ "Prefix: names" / "Prefix: values" line pairs -> {"Tcp.OutSegs": n, ...}
    for the WANTED counters this kernel has."""
    out: dict[str, int] = {}
    lines = text.splitlines()
    for head, values in zip(lines[::2], lines[1::2], strict=False):
        prefix, _, names = head.partition(":")
        wanted = WANTED.get(prefix)
        if not wanted:
            continue
        for name, value in zip(names.split(), values.partition(":")[2].split(), strict=False):
            if name in wanted:
                out[f"{prefix}.{name}"] = int(value)
    return out


def read(namespace: str) -> dict[str, int]:
    """The WANTED counters of network namespace `namespace` (by name)."""
    netns.pushns(namespace)
    try:
        return {k: v for f in FILES for k, v in parse(f.read_text()).items()}
    finally:
        netns.popns()
