"""What one socket showed over the run, and its name.

A socket is its own view of the 4-tuple ("laddr:lport > raddr:rport"):
both ends of a lab connection are sockets of this kernel, each with its own
figures, filled from its tcp_probe samples (correlator/tcp_samples.py) and
its discrete events (correlator/socket_events.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bus import rawconvert


@dataclass
class SocketFigures:
    key: str
    samples: int = 0
    hits: int = 0
    retransmits: int = 0
    retrans_given_up: int = 0
    cong: list[tuple[float, str]] = field(default_factory=list)
    resets_sent: int = 0
    resets_received: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    zero_periods: int = 0
    zero_closed_s: float = 0.0
    zero_probes: int = 0
    rcv_zero_closed_s: float = 0.0
    bytes_acked: int = 0
    seconds: float = 0.0
    cwnd_max: int = 0
    cwnd_drop: tuple[int, int, float] | None = None  # from, to, at (s)


def socket_keys(r: np.ndarray) -> list[str]:
    saddr = rawconvert.addr_text(r["family"], r["saddr"])
    daddr = rawconvert.addr_text(r["family"], r["daddr"])
    return [
        f"{sa}:{sp} > {da}:{dp}"
        for sa, sp, da, dp in zip(
            saddr, r["sport"].tolist(), daddr, r["dport"].tolist(), strict=True
        )
    ]


def entered(f: SocketFigures) -> dict[str, int]:
    out: dict[str, int] = {}
    for _, name in f.cong:
        out[name] = out.get(name, 0) + 1
    return out
