"""report.html's section for a two-host run: the handshakes as they crossed
the link (packets.pcap) and what the kernel says they negotiated (tcp_info)."""

from __future__ import annotations

import html
from typing import Any


def _e(x: Any) -> str:
    return html.escape(str(x))


def link_section(s: dict[str, Any]) -> str:
    """The section's HTML, or "" for a run without hosts."""
    info = (s.get("counts") or {}).get("tcp_info") or {}
    packets = s.get("packets") or {}
    if not info and not packets:
        return ""
    parts = ["<h2>Handshakes</h2>"]
    if info:
        keys = ("connections", "advmss", "snd_mss", "rcv_mss", "pmtu", "snd_wscale",
                "rcv_wscale", "timestamps", "sack", "wscale", "ecn", "congestion")
        parts.append("<p class=note>What the kernel reports per socket (sock_diag tcp_info, "
                     "smallest value over the path's sockets; options: sockets that use "
                     "them).</p><table><tr><th>path</th>"
                     + "".join(f"<th>{k}</th>" for k in keys) + "</tr>")
        for path, f in info.items():
            parts.append(f"<tr><td>{_e(path)}</td>"
                         + "".join(f"<td class=n>{_e(f.get(k, ''))}</td>" for k in keys)
                         + "</tr>")
        parts.append("</table>")
    rows = packets.get("handshakes") or []
    if rows:
        parts.append(f"<p class=note>On the wire: {packets['packets']} packets of "
                     f"{packets['connections']} connections in packets.pcap (the first "
                     f"{len(rows)} shown), as tcpdump prints them; each filter pastes into "
                     "Wireshark.</p><table><tr><th>client → server</th><th>packets</th>"
                     "<th>Wireshark display filter</th></tr>")
        for c in rows:
            steps = "<br>".join(
                f"{_e(p['t_ms'])} ms {_e(p['dir'])} {_e(p['flags'])} {_e(p['options'])} "
                f"win {_e(p['win'])}" for p in c["packets"])
            parts.append(f"<tr><td>{_e(c['client'])} → {_e(c['server'])}</td><td>{steps}</td>"
                         f"<td><code>{_e(c['filter'])}</code></td></tr>")
        parts.append("</table>")
    return "".join(parts)
