"""TCP sockets and their tcp_info from sock_diag, parsed with struct.

pyroute2 opens and binds the NETLINK_SOCK_DIAG socket (its DiagSocket, in
the namespace the caller is in); the request and the answer are packed and
parsed here because pyroute2 0.9.7 decodes tcpi_snd_wscale/tcpi_rcv_wscale
wrongly (both come back as snd) and decodes every attribute of every socket
(~1 s for 10k sockets, against a few tens of ms for the struct parse).
The kernel filters by port itself: the request carries inet_diag bytecode
("source or destination port is one of P"), so a lab's snapshot never
walks the rest of the machine's sockets.

Layouts: include/uapi/linux/inet_diag.h, sock_diag.h, tcp.h (tcp_info has
only grown at its end since 2.6; a shorter one from an older kernel is
padded with zeros).
"""

from __future__ import annotations

import os
import socket
import struct
from collections import namedtuple
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

from pyroute2 import DiagSocket

SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_ROOT, NLM_F_MATCH = 0x1, 0x100, 0x200
NLMSG_ERROR, NLMSG_DONE = 2, 3
INET_DIAG_REQ_BYTECODE = 1
INET_DIAG_INFO, INET_DIAG_CONG = 2, 4
INET_DIAG_BC_JMP, INET_DIAG_BC_S_EQ, INET_DIAG_BC_D_EQ = 1, 11, 12
ALL_STATES = 0xFFF
NLMSG = struct.Struct("=IHHII")
REQ = struct.Struct("=BBBBI48x")  # inet_diag_req_v2 (its inet_diag_sockid left zero)
MSG = struct.Struct("=BBBB4x16s16sIQIIIII")  # inet_diag_msg (ports read by PORTS)
PORTS = struct.Struct(">HH")  # idiag_sport, idiag_dport: network order
RTA = struct.Struct("=HH")
BC_OP = struct.Struct("=BBH")  # inet_diag_bc_op: code, yes, no
RECV_BYTES = 1 << 20

# The idiag_timer values (net/ipv4/inet_diag.c) and the tcpi_options bits (uapi tcp.h).
TIMERS = {0: None, 1: "retransmit", 2: "keepalive", 3: "time_wait", 4: "zero_window_probe"}
OPTIONS = {1: "timestamps", 2: "sack", 4: "wscale", 8: "ecn", 16: "ecn_seen"}

# struct tcp_info up to tcpi_rwnd_limited and tcpi_snd_wnd (6.18 is longer).
TCP_INFO_FIELDS = (
    "state ca_state retransmits probes backoff option_bits wscale flags "
    "rto ato snd_mss rcv_mss unacked sacked lost retrans fackets "
    "last_data_sent last_ack_sent last_data_recv last_ack_recv "
    "pmtu rcv_ssthresh rtt rttvar snd_ssthresh snd_cwnd advmss reordering "
    "rcv_rtt rcv_space total_retrans pacing_rate max_pacing_rate bytes_acked "
    "bytes_received segs_out segs_in notsent_bytes min_rtt data_segs_in data_segs_out "
    "delivery_rate busy_time rwnd_limited sndbuf_limited delivered delivered_ce "
    "bytes_sent bytes_retrans dsack_dups reord_seen rcv_ooopack snd_wnd rcv_wnd"
).split()
TCP_INFO = struct.Struct("=8B 24I 4Q 6I 4Q 2I 2Q 5I")
assert len(TCP_INFO_FIELDS) == len(TCP_INFO.unpack(bytes(TCP_INFO.size)))


# tcpi_options byte -> the names of its bits, made once (the byte has 7 bits in use).
_WSCALE, _OPTION_BITS = TCP_INFO_FIELDS.index("wscale"), TCP_INFO_FIELDS.index("option_bits")
_OPTION_NAMES = [tuple(name for bit, name in OPTIONS.items() if b & bit) for b in range(128)]


class TcpInfo(namedtuple("TcpInfo", TCP_INFO_FIELDS)):  # type: ignore[misc]
    """struct tcp_info as the kernel laid it out, fields by name (a tuple:
    made in one C call, which is what keeps 10k sockets fast), plus the two
    fields the kernel packs in bits."""

    __slots__ = ()

    @property
    def snd_wscale(self) -> int:
        return int(self[_WSCALE]) & 15

    @property
    def rcv_wscale(self) -> int:
        return int(self[_WSCALE]) >> 4

    @property
    def options(self) -> list[str]:
        return list(_OPTION_NAMES[int(self[_OPTION_BITS]) & 127])

    def as_dict(self) -> dict[str, Any]:
        out = dict(self._asdict())
        del out["wscale"], out["option_bits"]
        out.update(snd_wscale=self.snd_wscale, rcv_wscale=self.rcv_wscale, options=self.options)
        return out


def parse_tcp_info(raw: bytes) -> TcpInfo:
    """struct tcp_info -> TcpInfo; a shorter one (older kernel) padded with zeros."""
    if len(raw) < TCP_INFO.size:
        raw = bytes(raw).ljust(TCP_INFO.size, b"\0")
    return TcpInfo._make(TCP_INFO.unpack_from(raw))


def tcp_info_of(sock: socket.socket) -> dict[str, Any]:
    """tcp_info of one of our own sockets (getsockopt), parsed the same way."""
    info = parse_tcp_info(
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO.size)
    ).as_dict()
    info["congestion"] = (
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).split(b"\0")[0].decode()
    )
    return info


def port_filter(ports: Iterable[int]) -> bytes:
    """inet_diag bytecode: accept a socket whose source or destination port is listed.

    The tests are chained the way `ss` chains "or": a test that holds jumps
    (yes) onto a JMP whose "no" leads to the end (accept); one that fails
    jumps over that JMP to the next test; the last one's failure lands 4
    bytes past the end, which the kernel reads as reject. The kernel audits
    the program by walking the "yes" jumps, so every test must be on that
    walk: that is what the JMPs are for (their "yes" is the next test).
    """
    tests = [
        (code, port)
        for port in sorted(set(ports))
        for code in (INET_DIAG_BC_S_EQ, INET_DIAG_BC_D_EQ)
    ]
    size = 12 * len(tests) - 4
    out = bytearray()
    for i, (code, port) in enumerate(tests):
        out += BC_OP.pack(code, 8, 12)
        out += BC_OP.pack(0, 0, port)
        if i + 1 < len(tests):
            out += BC_OP.pack(INET_DIAG_BC_JMP, 4, size - len(out))
    return bytes(out)


class SockDiag(NamedTuple):
    """One TCP socket as sock_diag reports it (tcp_info None when not asked)."""

    family: int
    state: int
    laddr: str
    lport: int
    raddr: str
    rport: int
    timer: str | None
    expires_ms: int
    retrans: int
    rqueue: int
    wqueue: int
    inode: int
    cookie: int
    tcp_info: TcpInfo | None
    congestion: str | None


class DiagQuery:
    """A sock_diag socket in the caller's network namespace, kept open."""

    def __init__(self) -> None:
        self._ds = DiagSocket()
        self._ds.bind()
        # Our own file object on pyroute2's bound socket: raw bytes both ways.
        self._sock = socket.socket(fileno=os.dup(self._ds.fileno()))
        self._seq = 0

    def close(self) -> None:
        self._sock.close()
        self._ds.close()

    def __enter__(self) -> DiagQuery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def sockets(
        self,
        ports: Iterable[int] = (),
        info: bool = True,
        families: tuple[int, ...] = (socket.AF_INET, socket.AF_INET6),
    ) -> list[SockDiag]:
        """Every TCP socket (on one of `ports` when given), with tcp_info if `info`."""
        bytecode = port_filter(ports) if ports else b""
        out: list[SockDiag] = []
        for family in families:
            out.extend(self._dump(family, bytecode, info))
        return out

    def _dump(self, family: int, bytecode: bytes, info: bool) -> Iterator[SockDiag]:
        ext = (1 << (INET_DIAG_INFO - 1)) | (1 << (INET_DIAG_CONG - 1)) if info else 0
        body = REQ.pack(family, socket.IPPROTO_TCP, ext, 0, ALL_STATES)
        if bytecode:
            body += RTA.pack(RTA.size + len(bytecode), INET_DIAG_REQ_BYTECODE) + bytecode
        self._seq += 1
        self._sock.send(
            NLMSG.pack(
                NLMSG.size + len(body),
                SOCK_DIAG_BY_FAMILY,
                NLM_F_REQUEST | NLM_F_ROOT | NLM_F_MATCH,
                self._seq,
                0,
            )
            + body
        )
        while True:
            data = self._sock.recv(RECV_BYTES)
            offset = 0
            while offset + NLMSG.size <= len(data):
                length, kind, _flags, seq, _pid = NLMSG.unpack_from(data, offset)
                if length < NLMSG.size:
                    return
                if seq == self._seq:
                    if kind == NLMSG_DONE:
                        return
                    if kind == NLMSG_ERROR:
                        code = -struct.unpack_from("=i", data, offset + NLMSG.size)[0]
                        raise OSError(code, f"sock_diag: {os.strerror(code)}")
                    yield _parse(data, offset + NLMSG.size, offset + length)
                offset += (length + 3) & ~3


_NAMES: dict[bytes, str] = {}


def _congestion_name(raw: bytes) -> str:
    name = _NAMES.get(raw)
    if name is None:
        name = _NAMES[raw] = raw.split(b"\0")[0].decode()
    return name


_make_info = TcpInfo._make
_ADDRS: dict[bytes, str] = {}  # a lab has few addresses: text made once each


def _addr(family: int, raw: bytes) -> str:
    text = _ADDRS.get(raw)
    if text is None:
        size = 4 if family == socket.AF_INET else 16
        text = _ADDRS[raw] = socket.inet_ntop(family, raw[:size])
    return text


def _parse(data: bytes, start: int, end: int) -> SockDiag:
    (family, state, timer, retrans, src, dst, _if, cookie, expires, rqueue, wqueue, _uid, inode) = (
        MSG.unpack_from(data, start)
    )
    sport, dport = PORTS.unpack_from(data, start + 4)
    tcp_info: TcpInfo | None = None
    congestion: str | None = None
    offset = start + MSG.size
    while offset + RTA.size <= end:
        length, kind = RTA.unpack_from(data, offset)
        if length < RTA.size:
            break
        if kind == INET_DIAG_INFO:
            if length - RTA.size >= TCP_INFO.size:  # no copy: unpack in place
                tcp_info = _make_info(TCP_INFO.unpack_from(data, offset + RTA.size))
            else:
                tcp_info = parse_tcp_info(data[offset + RTA.size : offset + length])
        elif kind == INET_DIAG_CONG:
            congestion = _congestion_name(data[offset + RTA.size : offset + length])
        offset += (length + 3) & ~3
    # Positional: a tuple made in one call (SockDiag's field order).
    return SockDiag(
        family,
        state,
        _addr(family, src),
        sport,
        _addr(family, dst),
        dport,
        TIMERS.get(timer) if timer in TIMERS else str(timer),
        expires,
        retrans,
        rqueue,
        wqueue,
        inode,
        cookie,
        tcp_info,
        congestion,
    )
