"""The diagnosis's sentences about the TCP internals of a run.

The bulk senders' transfers first (what the scenario is about), then the
kernel's retransmit counters against what the tracepoint saw, then each
socket's closed windows, retransmits and errors.
"""

from __future__ import annotations

from typing import Any

from correlator.socket_figures import SocketFigures, entered


def congestion_text(f: SocketFigures) -> str:
    """ "; cwnd fell from A to B at T s; entered Recovery 2x" for a socket
    that retransmitted, "" for one that did not."""
    text = ""
    if f.cwnd_drop and f.retransmits:
        a, b, t = f.cwnd_drop
        text += f"; cwnd fell from {a} to {b} at {t:.1f} s"
    states = {k: v for k, v in entered(f).items() if k != "Open"}
    if states:
        text += "; entered " + ", ".join(f"{k} {v}x" for k, v in states.items())
    return text


def bulk_sentences(bulk: dict[str, dict[str, Any]], figures: dict[str, SocketFigures]) -> list[str]:
    out = []
    for key, rec in bulk.items():
        f = figures.get(key)
        seconds = float(rec.get("seconds") or 0)
        n = int(rec.get("bytes") or 0)
        text = f"{rec.get('actor')} ({rec.get('congestion') or 'default'}): {n / 1e6:.1f} MB"
        if seconds:
            text += f" in {seconds:.1f} s, {n * 8 / seconds / 1e6:.1f} Mbit/s"
        if f is not None:
            text += f"; {f.retransmits} segments retransmitted"
            text += congestion_text(f)
            if f.zero_periods:
                # The client polls for writability (actors/client.py): it
                # waits while its send buffer is full, EAGAIN only in a race.
                text += (
                    f"; while the window was closed it waited for its send buffer "
                    f"({int(rec.get('eagain') or 0)} sends returned EAGAIN)"
                )
        out.append(text + ".")
    return out


def sentences(
    figures: dict[str, SocketFigures],
    kernel: dict[str, int],
    bulk_keys: set[str],
    seen: int,
    refused: int,
    missed: int,
    unseen: int = 0,
) -> list[str]:
    out = []
    if kernel.get("OutSegs"):
        sent, retrans = kernel["OutSegs"], kernel.get("RetransSegs", 0)
        text = (
            f"{retrans:,} segments retransmitted ({100 * retrans / sent:.1f}% of {sent:,} sent, "
            f"the kernel's counters of the lab's hosts); tcp_retransmit_skb saw {seen:,} "
            "between the two readings"
        )
        if missed:
            text += (
                f", and the kernel skipped its program {missed}x (another BPF program "
                "was running on that CPU)"
            )
        if unseen:
            text += (
                f"; the sockets' own counters show {unseen} more that no tracepoint hit reported"
            )
        out.append(text + ".")
    if kernel.get("TCPRetransFail"):
        failed = kernel["TCPRetransFail"]
        if failed == refused:
            why = "the qdisc refused them"
        elif refused:
            why = f"their transmit failed ({refused} refused by the qdisc)"
        else:  # 6.1, 5.10: the tracepoint does not say why
            why = "their transmit failed (a qdisc that drops, or no memory)"
        out.append(f"{failed} retransmissions were never sent: {why}.")
    for f in figures.values():
        if f.zero_periods:
            probes = (
                f"{kernel['TCPWinProbe']} zero-window probes sent (the kernel's TCPWinProbe), "
                if "TCPWinProbe" in kernel
                else ""
            )
            out.append(
                f"{f.key}: the receiver's window was 0 for {f.zero_closed_s:.1f} s "
                f"({f.zero_periods} times): its reader fell behind; "
                f"{probes}{f.zero_probes} ACKs received while it was closed."
            )
        if f.retransmits and f.key not in bulk_keys:
            text = f"{f.key}: {f.retransmits} segment(s) retransmitted"
            if f.bytes_acked and f.seconds > 0:
                text += f", {f.bytes_acked / f.seconds / 1e6:.2f} MB/s acknowledged"
            text += congestion_text(f)
            out.append(text + ".")
        for name, n in f.errors.items():
            out.append(f"{f.key}: the kernel reported {name} to the application ({n}x).")
    return out
