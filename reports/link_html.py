"""report.html's section for a two-host run: the handshakes as they crossed
the link (packets.pcap) and what the kernel says they negotiated (tcp_info)."""

from __future__ import annotations

import html
from typing import Any


def _e(x: Any) -> str:
    return html.escape(str(x))


def link_section(s: dict[str, Any]) -> str:
    """The section's HTML, or "" for a run without hosts."""
    counts = s.get("counts") or {}
    info = counts.get("tcp_info") or {}
    packets = s.get("packets") or {}
    if not info and not packets:
        return ""
    parts = ["<h2>Handshakes</h2>"]
    keep = counts.get("keepalive") or {}
    if keep.get("sockets"):
        figures = [
            ("sockets with a keepalive timer", keep["sockets"]),
            ("most probes unanswered at once (tcpi_probes)", keep["max_probes"]),
            ("connections the kernel gave up on", keep["gave_up"]),
            ("seconds from the last ACK to the reset", keep["give_up_s"]),
            ("far ends still ESTABLISHED afterwards (ghosts)", keep["ghosts"]),
        ]
        parts = [
            "<h2>Keepalive</h2><table>"
            + "".join(f"<tr><td>{_e(k)}</td><td class=n>{_e(v)}</td></tr>" for k, v in figures)
            + "</table>",
            *parts,
        ]
    if info:
        keys = (
            "connections",
            "advmss",
            "snd_mss",
            "rcv_mss",
            "pmtu",
            "snd_wscale",
            "rcv_wscale",
            "timestamps",
            "sack",
            "wscale",
            "ecn",
            "congestion",
        )
        parts.append(
            "<p class=note>What the kernel reports per socket (sock_diag tcp_info, "
            "smallest value over the path's sockets; options: sockets that use "
            "them).</p><table><tr><th>path</th>" + "".join(f"<th>{k}</th>" for k in keys) + "</tr>"
        )
        for path, f in info.items():
            parts.append(
                f"<tr><td>{_e(path)}</td>"
                + "".join(f"<td class=n>{_e(f.get(k, ''))}</td>" for k in keys)
                + "</tr>"
            )
        parts.append("</table>")
    rows = packets.get("handshakes") or []
    if rows:
        parts.append(
            f"<p class=note>On the wire: {packets['packets']} packets of "
            f"{packets['connections']} connections in packets.pcap (the first "
            f"{len(rows)} shown), as tcpdump prints them; each filter pastes into "
            "Wireshark.</p><table><tr><th>client → server</th><th>packets</th>"
            "<th>Wireshark display filter</th></tr>"
        )
        for c in rows:
            steps = "<br>".join(
                f"{_e(p['t_ms'])} ms {_e(p['dir'])} {_e(p['flags'])} {_e(p['options'])} "
                f"win {_e(p['win'])}"
                for p in c["packets"]
            )
            parts.append(
                f"<tr><td>{_e(c['client'])} → {_e(c['server'])}</td><td>{steps}</td>"
                f"<td><code>{_e(c['filter'])}</code></td></tr>"
            )
        parts.append("</table>")
    return "".join(parts)
