"""report.html's section for a run with the TCP internals: per socket, the
congestion window, the windows and bytes in flight, and the smoothed RTT
over time, with retransmits, congestion-state changes and resets marked."""

from __future__ import annotations

import html
import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MARK_STYLE = {
    "retransmit": ("#d62728", ":"),
    "cong_state": ("#9467bd", "--"),
    "send_reset": ("#000000", "-"),
    "receive_reset": ("#000000", "-."),
    "sk_error": ("#8c564b", "-"),
}


def _plot(p: dict[str, Any]) -> str:
    fig, axes = plt.subplots(3, 1, figsize=(10, 6.4), sharex=True)
    t = p["t"]
    seg, byt, rtt = axes
    seg.step(t, p["cwnd"], where="post", label="cwnd", linewidth=1.4)
    ss = [(x, y) for x, y in zip(t, p["ssthresh"], strict=True) if y >= 0]
    if ss:
        seg.step(
            [x for x, _ in ss],
            [y for _, y in ss],
            where="post",
            label="ssthresh",
            linestyle="--",
            linewidth=1.1,
        )
    seg.set_ylabel("segments")
    for key, style in (("snd_wnd", "-"), ("rcv_wnd", "--"), ("in_flight", ":")):
        byt.step(t, [v / 1024 for v in p[key]], where="post", label=key, linestyle=style)
    byt.set_ylabel("KiB")
    rtt.plot(t, [v / 1000 for v in p["srtt_us"]], label="srtt", linewidth=1.2)
    rtt.set_ylabel("ms")
    rtt.set_xlabel("seconds since start")
    seen: set[str] = set()
    for m in p.get("marks", []):
        color, style = MARK_STYLE.get(m["event"], ("#777", ":"))
        label = m["event"] if m["event"] not in seen else None
        seen.add(m["event"])
        for ax in axes:
            ax.axvline(
                m["t_s"],
                color=color,
                linestyle=style,
                linewidth=0.7,
                alpha=0.6,
                label=label if ax is seg else None,
            )
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    who = f"{p['label']}: " if p.get("label") else ""
    seg.set_title(f"{who}{p['socket']} ({p['samples']} samples)")
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


def internals_section(s: dict[str, Any]) -> str:
    """The section's HTML, or "" for a run without the internals probes."""
    plots = s.get("tcp_series") or []
    figures = (s.get("counts") or {}).get("internals") or {}
    if not plots and not figures:
        return ""
    parts = [
        "<h2>TCP internals</h2>",
        "<p class=note>From tcp:tcp_probe, sampled in the kernel (on a cwnd or "
        "ssthresh change, on a window crossing 0, else every 20 ms per socket), and "
        "the retransmit, congestion-state, reset and error tracepoints. Each socket "
        "is its own view (local &gt; remote); every sample is in tcp_series.jsonl.</p>",
    ]
    zw = figures.get("zero_window") or {}
    rows = [
        ("sockets sampled", figures.get("sockets", 0)),
        ("samples (tracepoint hits)", f"{figures.get('samples', 0)} ({figures.get('hits', 0)})"),
        ("segments retransmitted", figures.get("retransmits", 0)),
        (
            "congestion states entered",
            ", ".join(f"{k} {v}" for k, v in (figures.get("cong_states") or {}).items()) or "none",
        ),
        (
            "resets sent / received",
            f"{figures.get('resets_sent', 0)} / {figures.get('resets_received', 0)}",
        ),
        (
            "zero-window periods (longest total per socket, s)",
            f"{zw.get('periods', 0)} ({zw.get('closed_s', 0)})",
        ),
        ("zero-window probes answered", zw.get("probes", 0)),
    ]
    parts.append(
        "<table>"
        + "".join(
            f"<tr><td>{html.escape(str(k))}</td><td class=n>{html.escape(str(v))}</td></tr>"
            for k, v in rows
        )
        + "</table>"
    )
    for p in plots:
        parts.append(f"<div class=plot>{_plot(p)}</div>")
    return "".join(parts)
