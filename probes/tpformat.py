"""Tracepoint layouts: what this kernel's format files say, as -D flags.

bcc builds a tracepoint's argument struct from its tracefs format file, so
the struct is right for the running kernel; a program that names a field
the kernel lacks does not compile. The TCP internals' tracepoints changed
between the kernels tcplab runs on (5.10, 6.1, 6.18):

- tcp:tcp_probe has `family` only after 5.10 and `skaddr` only from 6.12;
- tcp:tcp_send_reset has no sport/dport from 6.10 (sockaddr images
  instead) and from 6.11 a `reason` of type enum sk_rst_reason, which the
  6.1 headers used here do not define;
- tcp:tcp_cong_state_set exists from 6.1, sock:inet_sk_error_report from
  5.13.

`layout_flags()` turns the format files into -D flags (TCPLAB_TP_<event>
when the tracepoint exists, TCPLAB_TP_<event>_<field> per field,
TCPLAB_ENUM_<name> per enum type it names) so the C code picks its
variant by #ifdef; `gaps()` says in words what this kernel lacks.
"""

from __future__ import annotations

import re
from pathlib import Path

# The tracepoints each internals probe reads, and the fields it needs to
# know about (the rest of the format is not passed on).
TRACEPOINTS: dict[str, dict[str, tuple[str, ...]]] = {
    "tcp_probe": {"tcp:tcp_probe": ("family", "skaddr")},
    "tcp_events": {
        "tcp:tcp_retransmit_skb": ("family", "err"),
        "tcp:tcp_retransmit_synack": ("family",),
        "tcp:tcp_cong_state_set": ("family",),
        "tcp:tcp_send_reset": ("family", "sport", "reason"),
        "tcp:tcp_receive_reset": ("family",),
        "sock:inet_sk_error_report": ("family",),
    },
}

# What a missing piece costs, for `tcplab doctor` and the attach plan.
MEANING = {
    "tcp:tcp_cong_state_set": "no congestion-state changes (the tracepoint exists from 6.1)",
    "sock:inet_sk_error_report": "no socket errors from the kernel (from 5.13)",
    "tcp:tcp_retransmit_skb": "no retransmits",
    "tcp:tcp_retransmit_synack": "no SYN-ACK retransmits",
    "tcp:tcp_send_reset": "no resets sent",
    "tcp:tcp_receive_reset": "no resets received",
    "tcp:tcp_probe family": "family read from the sockaddr image (the field exists after 5.10)",
    "tcp:tcp_probe skaddr": "sockets known by 4-tuple, not by address (skaddr from 6.12)",
    "tcp:tcp_send_reset sport": "",  # 6.10+ reads the ports from the images: nothing lost
}

_FIELD = re.compile(r"field:(?P<decl>[^;]*?)\s*(?P<name>\w+)(\[[^\]]*\])?;")
_ENUM = re.compile(r"\benum\s+(\w+)")


def fields(root: Path | None, tracepoint: str) -> dict[str, str] | None:
    """Field name -> declared type of a tracepoint (common_* left out), or
    None when this kernel does not have it (or tracefs, `root`, is not mounted)."""
    category, _, event = tracepoint.partition(":")
    path = root / "events" / category / event / "format" if root else None
    if path is None or not path.exists():
        return None
    out = {}
    for m in _FIELD.finditer(path.read_text()):
        if not m.group("name").startswith("common_"):
            out[m.group("name")] = m.group("decl").strip()
    return out


def layout_flags(root: Path | None, probe: str) -> list[str]:
    """The -D flags that tell probe's C code which layout each of its
    tracepoints has here (none for a probe outside TRACEPOINTS)."""
    flags: list[str] = []
    enums: set[str] = set()
    for tp, wanted in TRACEPOINTS.get(probe, {}).items():
        have = fields(root, tp)
        if have is None:
            continue
        event = tp.partition(":")[2]
        flags.append(f"-DTCPLAB_TP_{event}")
        flags += [f"-DTCPLAB_TP_{event}_{f}" for f in wanted if f in have]
        for decl in have.values():
            enums.update(_ENUM.findall(decl))
    flags += [f"-DTCPLAB_ENUM_{e}" for e in sorted(enums)]
    return flags


def gaps(root: Path | None, probe: str) -> list[str]:
    """What probe misses on this kernel, in words (empty: nothing)."""
    out = []
    for tp, wanted in TRACEPOINTS.get(probe, {}).items():
        have = fields(root, tp)
        if have is None:
            out.append(f"{tp} missing: {MEANING.get(tp, 'not traced')}")
            continue
        for f in wanted:
            meaning = MEANING.get(f"{tp} {f}")
            if f not in have and meaning:
                out.append(f"{tp} has no {f}: {meaning}")
    return out
