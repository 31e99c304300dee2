"""report.html: the run told to a person, diagnosis first, then the plots.

Self-contained: styles inline, plots as inline SVG from matplotlib, no
script and no external asset, so it opens offline and archives as one file.
"""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: render to SVG only
# Element ids from a fixed salt and no date: the same run gives the same page.
matplotlib.rcParams["svg.hashsalt"] = "tcplab"
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from reports.internals_html import internals_section  # noqa: E402
from reports.link_html import link_section  # noqa: E402

# Fixed colours per state and outcome so every report reads the same way.
STATE_COLORS = {
    "TIME_WAIT": "#d62728",
    "ESTABLISHED": "#2ca02c",
    "CLOSE_WAIT": "#ff7f0e",
    "FIN_WAIT2": "#9467bd",
    "FIN_WAIT1": "#8c564b",
    "SYN_SENT": "#17becf",
    "SYN_RECV": "#bcbd22",
    "LAST_ACK": "#7f7f7f",
    "LISTEN": "#1f77b4",
}
OUTCOME_COLORS = {
    "clean": "#2ca02c",
    "time_wait": "#d62728",
    "stuck_close_wait": "#ff7f0e",
    "stuck_fin_wait2": "#9467bd",
    "refused": "#8c564b",
    "reset": "#e377c2",
    "never_accepted": "#7f7f7f",
    "failed_connect": "#000000",
    "open_at_end": "#1f77b4",
}

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em} h2{margin-top:1.6em;border-bottom:1px solid #ddd}
.sub{color:#666;margin-top:0}
.diag{background:#fff8e6;border-left:5px solid #e0a000;padding:.6em 1.2em;font-size:1.08em}
.diag li{margin:.35em 0}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ddd;padding:.25em .6em;
text-align:left} th{background:#f4f4f4} td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#1a7f37;font-weight:bold} .bad{color:#c0392b;font-weight:bold}
.unk{color:#8a6d00;font-weight:bold}
.cut{background:#fdecea;border-left:5px solid #c0392b;padding:.6em 1.2em}
.plot{margin:.5em 0 1.5em} .plot svg{max-width:100%;height:auto}
.note{color:#666;font-size:.92em}
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _svg(fig: Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    # Drop the XML prolog and doctype: inline SVG in HTML starts at <svg.
    return text[text.index("<svg") :]


def _fmt_ns(ns: float) -> str:
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g}{unit}"
    return f"{ns:.3g}ns"


def plot_states(points: list[list[Any]], phases: list[dict[str, Any]], title: str) -> str | None:
    if not points:
        return None
    names = sorted({k for _, vals in points for k in vals}, key=lambda s: (s != "TIME_WAIT", s))
    fig, ax = plt.subplots(figsize=(10, 3.6))
    ts = [p[0] for p in points]
    drawn = 0
    for name in names:
        ys = [p[1].get(name, 0) for p in points]
        if not any(ys):
            continue
        # Dashes as well as colours: equal counts would hide each other.
        ax.plot(
            ts,
            ys,
            label=name,
            color=STATE_COLORS.get(name),
            linewidth=2.4 if name == "TIME_WAIT" else 1.6,
            linestyle=("-", "--", ":", "-.")[drawn % 4],
        )
        drawn += 1
    for ph in phases:
        ax.axvline(ph["t"], color="#999", linestyle="--", linewidth=0.8)
        ax.text(
            ph["t"],
            1.0,
            f" {ph['name']}",
            transform=ax.get_xaxis_transform(),
            va="top",
            fontsize=8,
            color="#555",
        )
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("sockets")
    ax.set_title(title)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    ax.grid(alpha=0.3)
    return _svg(fig)


def plot_fds(points: list[list[Any]], actors: dict[str, str]) -> str | None:
    if not points:
        return None
    pids = sorted({k for _, vals in points for k in vals})
    if not pids:
        return None
    fig, ax = plt.subplots(figsize=(10, 2.8))
    for pid in pids:
        ax.plot(
            [p[0] for p in points],
            [p[1].get(pid, 0) for p in points],
            label=f"{actors.get(pid, 'pid')} {pid}",
        )
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("open fds")
    ax.set_title("Open file descriptors per process (observer)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _svg(fig)


def plot_lifetimes(lifetimes: dict[str, dict[str, Any]]) -> str | None:
    if not any(h["count"] for h in lifetimes.values()):
        return None
    bounds = sorted({int(b) for h in lifetimes.values() for b in h["buckets"]})
    idx = {b: i for i, b in enumerate(bounds)}
    fig, ax = plt.subplots(figsize=(10, 3.4))
    bottom = [0] * len(bounds)
    for outcome, h in lifetimes.items():
        ys = [0] * len(bounds)
        for b, n in h["buckets"].items():
            ys[idx[int(b)]] = n
        ax.bar(
            range(len(bounds)),
            ys,
            bottom=bottom,
            label=f"{outcome} ({h['count']})",
            color=OUTCOME_COLORS.get(outcome),
        )
        bottom = [a + b for a, b in zip(bottom, ys, strict=True)]
    ax.set_xticks(range(len(bounds)))
    ax.set_xticklabels([f"<{_fmt_ns(b)}" for b in bounds], rotation=45, fontsize=7)
    ax.set_ylabel("sockets")
    ax.set_title("Socket lifetimes (first transition to CLOSE, or to the end of the run)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _svg(fig)


def plot_epoll(epoll: dict[str, dict[str, Any]]) -> str | None:
    busy = {pid: e for pid, e in epoll.items() if e["ready"]["count"]}
    if not busy:
        return None
    # Power-of-two bins: a C10k loop returns anything from 1 to thousands.
    shown = sorted(busy.items(), key=lambda kv: -kv[1]["calls"])[:4]
    bins: dict[str, dict[int, int]] = {}
    for pid, e in shown:
        per: dict[int, int] = {}
        for k, n in e["ready"]["counts"].items():
            b = max(int(k), 1).bit_length() - 1
            per[b] = per.get(b, 0) + n
        bins[pid] = per
    top = max(b for per in bins.values() for b in per)
    labels = [str(1 << b) if b < 1 else f"{1 << b}-{(1 << (b + 1)) - 1}" for b in range(top + 1)]
    fig, ax = plt.subplots(figsize=(10, 3.2))
    width = 0.8 / len(shown)
    for i, (pid, e) in enumerate(shown):
        xs = [b + i * width for b in range(top + 1)]
        ax.bar(
            xs,
            [bins[pid].get(b, 0) for b in range(top + 1)],
            width=width,
            label=f"{e.get('actor') or 'pid'} {pid}: {e['calls']} calls, "
            f"median {e['ready']['median']}",
        )
    ax.set_xticks([b + 0.4 - width / 2 for b in range(top + 1)])
    ax.set_xticklabels(labels, rotation=30, fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("ready file descriptors returned by one epoll_wait")
    ax.set_ylabel("wake-ups (log)")
    ax.set_title("epoll_wait: ready descriptors per wake-up")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _svg(fig)


def plot_accept(accept: dict[str, dict[str, Any]]) -> str | None:
    rows = []
    for pid, per in accept.items():
        for k, v in per.items():
            if k != "actor" and isinstance(v, int):
                rows.append((f"{per.get('actor') or 'pid'} {pid}", k, v))
    if not rows:
        return None
    kinds = sorted({r[1] for r in rows}, key=lambda k: (k != "ok", k))
    owners = sorted({r[0] for r in rows})
    fig, ax = plt.subplots(figsize=(10, 2.2 + 0.4 * len(owners)))
    width = 0.8 / len(kinds)
    colors = {"ok": "#2ca02c", "EAGAIN": "#1f77b4", "EMFILE": "#d62728"}
    for i, kind in enumerate(kinds):
        vals = [sum(v for o, k, v in rows if o == owner and k == kind) for owner in owners]
        ys = [j + i * width for j in range(len(owners))]
        ax.barh(ys, vals, height=width, label=kind, color=colors.get(kind))
        for y, v in zip(ys, vals, strict=True):
            if v:
                ax.text(v, y, f" {v}", va="center", fontsize=8)
    ax.set_yticks([j + 0.4 - width / 2 for j in range(len(owners))])
    ax.set_yticklabels(owners)
    counts = [v for _, _, v in rows if v]
    if counts and max(counts) > 50 * min(counts):
        ax.set_xscale("log")  # 10000 successes must not hide 2 failures
    ax.set_xlabel("accept4 returns")
    ax.set_title("accept4 outcomes per process (success, EAGAIN, EMFILE, ...)")
    ax.legend(fontsize=8)
    return _svg(fig)


def _table(rows: list[tuple[Any, ...]], head: tuple[str, ...]) -> str:
    out = ["<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        cells = []
        for v in r:
            cls = ' class="n"' if isinstance(v, int | float) and not isinstance(v, bool) else ""
            cells.append(f"<td{cls}>{_e(v)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "".join(out) + "</table>"


def _loss_rows(s: dict[str, Any]) -> list[tuple[Any, ...]]:
    loss = s["losses"]
    rec = loss["recording"]
    rows: list[tuple[Any, ...]] = []
    for name, p in sorted(loss["probe_programs"].items()):
        rows.append(("kernel", f"probe {name}: events lost in the ring buffer", p["drops"]))
    if not loss["probe_programs"]:
        rows.append(("kernel", "probe drop counters (no probe stats recorded)", "n/a"))
    bus = loss.get("bus") or {}
    for reason, n in sorted((bus.get("rejected") or {}).items()):
        rows.append(("bus", f"frames rejected by the orchestrator: {reason}", n))
    rows.append(("bus", "sequence gaps seen by the orchestrator", len(bus.get("gaps") or [])))
    rows.append(("recording", "corrupt frames skipped", rec["corrupt_frames"]))
    rows.append(("recording", "bytes skipped", rec["skipped_bytes"]))
    rows.append(("recording", "sequence gaps in the recording", rec["gap_count"]))
    rows.append(("recording", "truncated last frame", "yes" if rec["truncated_tail"] else "no"))
    incomplete = [s for s, v in rec["senders"].items() if not v["complete"]]
    rows.append(
        (
            "recording",
            "senders without a complete stream up to their eof",
            ", ".join(incomplete) or 0,
        )
    )
    rows.append(("correlator", "events too late to sort in time order (kept)", loss["late_events"]))
    for k, v in sorted(loss["unusable"].items()):
        rows.append(("correlator", f"unusable items: {k.split('.', 1)[1]}", v))
    return rows


def render(s: dict[str, Any]) -> str:
    cnt = s["counts"]
    plots = s["plots"]
    cov = s["coverage"]
    parts = [
        f"<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>tcplab: {_e(s.get('scenario') or 'run')}</title>"
        f"<style>{CSS}</style></head><body>"
    ]
    parts.append(f"<h1>tcplab run: {_e(s.get('scenario') or 'unnamed')}</h1>")
    sub = s.get("description") or ""
    r = s["rates"]
    # Both ends of a loopback connection are lab sockets: count sockets by side.
    so = s.get("sockets") or {}
    sides = f"{so.get('connect', 0)} opened by connect(), {so.get('server_side', 0)} server side"
    if so.get("unknown_side"):
        sides += f", {so['unknown_side']} of unknown side"
    parts.append(
        f"<p class=sub>{_e(sub)} — {r['duration_s']} s, "
        f"{so.get('total', cnt['connections'])} sockets ({sides}), "
        f"{sum(cnt['kernel_events'].values())} kernel events</p>"
    )
    hz = s.get("horizon") or {}
    if hz.get("kernel_ended_s") is not None:
        parts.append(
            f"<p class=cut>The kernel view ended at {hz['kernel_ended_s']:g} s of "
            f"{hz['run_s']:g} s: {_e(hz['kernel_why'])}.</p>"
        )
    if hz.get("recording_ends_s") is not None:
        parts.append(
            f"<p class=cut>The recording ends at {hz['recording_ends_s']:g} s of "
            f"{hz['run_s']:g} s: {_e(hz['recording_why'])}.</p>"
        )

    parts.append("<h2>What happened</h2><div class=diag><ul>")
    parts += [f"<li>{_e(line)}</li>" for line in s["diagnosis"]]
    parts.append("</ul></div>")
    parts.append(link_section(s))
    parts.append(internals_section(s))

    if s["expectations"]:
        parts.append("<h2>Expected kernel signature</h2>")
        rows = []
        for e in s["expectations"]:
            mark = {
                "held": "<span class=ok>held</span>",
                "unknown": "<span class=unk>unknown</span>",
            }.get(e.get("status", ""), "<span class=bad>FAILED</span>")
            note = e.get("error") or e.get("why")
            rows.append(
                f"<tr><td>{_e(e['path'])}</td><td>{_e(e['expect'])}</td>"
                f"<td class=n>{_e(e['actual'])}</td><td>{mark}"
                f"{' ' + _e(note) if note else ''}</td></tr>"
            )
        parts.append(
            "<table><tr><th>count</th><th>expected</th><th>actual</th><th></th></tr>"
            + "".join(rows)
            + "</table>"
        )

    parts.append("<h2>Outcomes</h2>")
    parts.append(
        _table(
            [(k, v) for k, v in cnt["outcomes"].items() if v] or [("none", 0)],
            ("outcome", "sockets"),
        )
    )
    if cnt["errors"]:
        parts.append(_table(list(cnt["errors"].items()), ("error reported by the app", "count")))

    svg = plot_states(
        plots["observer_states"],
        plots["phases"],
        "TCP state counts over time (observer, TIME_WAIT included)",
    )
    if svg is None:
        svg = plot_states(
            plots["kernel_states"],
            plots["phases"],
            "Live sockets per state from the tracepoint (no TIME_WAIT: the "
            "kernel does not report it)",
        )
    plot_list = [
        ("State counts over time", svg),
        (
            "Open file descriptors",
            plot_fds(
                plots["fds"],
                {
                    str(v.get("pid")): k
                    for k, v in (s.get("actors") or {}).items()
                    if isinstance(v, dict)
                },
            ),
        ),
        ("Connection lifetimes", plot_lifetimes(plots["lifetimes_ns"])),
        ("epoll_wait ready counts", plot_epoll(plots["epoll"])),
        ("accept4 results", plot_accept(plots["accept"])),
    ]
    parts.append("<h2>Plots</h2>")
    for title, body in plot_list:
        if body is None:
            parts.append(f"<p class=note>{_e(title)}: no data in this run.</p>")
        else:
            parts.append(f"<div class=plot>{body}</div>")

    parts.append("<h2>Lost-event ledger</h2>")
    parts.append(_table(_loss_rows(s), ("where", "what", "count")))

    parts.append("<h2>Coverage</h2>")
    parts.append(
        _table(
            [
                (
                    "application connections matched with kernel transitions",
                    f"{cov['app_connections_matched']} / {cov['app_connections']}",
                    f"{cov['app_connections_pct']}%",
                ),
                (
                    "kernel events with an owner",
                    f"{cov['kernel_events_owned']} / {cov['kernel_events']}",
                    f"{cov['kernel_events_pct']}%",
                ),
                (
                    "accept4/epoll_wait events of processes outside the lab (not counted)",
                    cov["kernel_events_outside_lab"],
                    "",
                ),
                (
                    "sockets the kernel saw, with an owner",
                    f"{cov['kernel_connections_owned']} / {cov['kernel_connections']}",
                    f"{cov['kernel_connections_pct']}%",
                ),
            ],
            ("what", "matched", "share"),
        )
    )

    if s.get("actors"):
        parts.append("<h2>Actors</h2>")
        parts.append(
            _table(
                [
                    (
                        name,
                        a.get("role"),
                        a.get("pid"),
                        a.get("exit_code"),
                        "crashed" if a.get("crashed") else "",
                    )
                    for name, a in s["actors"].items()
                    if isinstance(a, dict)
                ],
                ("actor", "role", "pid", "exit code", ""),
            )
        )
        # The end of a crashed actor's log usually says why it crashed.
        for name, a in s["actors"].items():
            if isinstance(a, dict) and a.get("crashed") and a.get("last_lines"):
                parts.append(f"<p>The end of {_e(name)}'s log ({_e(a.get('log'))}):</p>")
                parts.append(f"<pre>{_e(chr(10).join(a['last_lines']))}</pre>")
    parts.append(
        "<p class=note>Files: events.jsonl (timeline), connections.jsonl "
        "(lifecycles), summary.json (all figures), trace.json (open in "
        "ui.perfetto.dev). State events carry cpu_pid (whoever was on the CPU) "
        "and owner (joined from accept4 and the actors' logs): the owner is "
        "the real one.</p></body></html>"
    )
    return "\n".join(parts)


def write_html(path: Path, summary: dict[str, Any]) -> None:
    path.write_text(render(summary), encoding="utf-8")
