"""The bench table: each row as text for the terminal and as markdown for
docs/bench.md, with the notes that say how to read them."""

from __future__ import annotations

from typing import Any

from bench.goals import DOC, GOAL_ROWS
from bench.pairs import SPREAD_LIMIT, Row

NOTES = (
    "Ratio = median of the paired ratios (value and peer run back to back, who goes first "
    f"alternating); spread = their min-max; a row wider than ±{SPREAD_LIMIT:.0%} of its median "
    "got more pairs (the last ones are reported) and is NOISY if they never agreed. Idle "
    "conditions: both arms of the Connection rate, Observation overhead and Event loss rows "
    "ran with a SCHED_IDLE busy loop on every CPU (an idle vCPU wakes slowly here, which "
    "would flatter whichever arm keeps a core busy)."
)


def fmt(x: float | None) -> str:
    if x is None or x != x:  # None or NaN
        return "—"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def goal_text(r: Row) -> str:
    return "—" if r.goal == "—" else f"{r.goal_on} {r.goal}"


def met_text(r: Row) -> str:
    if r.value is None:
        return "not measured"
    met = {True: "yes", False: "NO", None: "—"}[r.met]
    return f"{met} (noisy)" if r.noisy and r.met is not None else met


def spread_text(r: Row) -> str:
    """min-max of the paired ratios and how many pairs: "0.91-1.02 (5 of 7 pairs)"."""
    if r.spread is None:
        return "— (1 run each)" if r.ratio is not None else "—"
    lo, hi = r.spread
    n = len(r.ratios)
    pairs = f"{n} pair{'s' * (n > 1)}" if r.pairs_run <= n else f"last {n} of {r.pairs_run} pairs"
    return f"{fmt(lo)}–{fmt(hi)} ({pairs}{', NOISY' if r.noisy else ''})"


def cells(r: Row) -> list[str]:
    peer = f"{fmt(r.peer)} ({r.peer_label})" if r.peer is not None else "—"
    ratio = fmt(r.ratio) if r.ratio is not None else "—"
    return [
        r.measure,
        f"{fmt(r.value)} {r.unit}",
        peer,
        ratio,
        spread_text(r),
        goal_text(r),
        met_text(r),
    ]


def header(meta: dict[str, Any]) -> str:
    m = meta["machine"]
    return (
        f"{meta['date']}, mode {meta['mode']}, {meta['seconds']} s; "
        f"{m['nproc']} cores, kernel {m['kernel']}, {m['cpu']}"
    )


def goals_line(rows: list[Row]) -> str:
    """Issue 11's goals in one line: which rows met theirs, which did not."""
    by_key = {r.key: r for r in rows}
    met = [k for k in GOAL_ROWS if k in by_key and by_key[k].met]
    missed = [k for k in GOAL_ROWS if k not in met]
    return (
        f"Issue 11's goals: {len(met)} of {len(GOAL_ROWS)} met"
        + (f" ({', '.join(met)})" if met else "")
        + (f"; missed or not measured: {', '.join(missed)} (why: {DOC})" if missed else "")
    )


def text_table(meta: dict[str, Any], rows: list[Row]) -> str:
    out = [f"\ntcplab bench: {header(meta)}", ""]
    section = ""
    for r in rows:
        if r.section != section:
            section = r.section
            out.append(f"== {section}")
        c = cells(r)
        out.append(f"  {c[0]}")
        out.append(
            f"      value {c[1]} | peer {c[2]} | ratio {c[3]} | spread {c[4]} | goal {c[5]} "
            f"| met {c[6]}"
        )
        if r.note:
            out.append(f"      {r.note}")
    missed = [r.key for r in rows if r.met is False or r.value is None]
    noisy = [r.key for r in rows if r.noisy]
    out.append("")
    out.append(NOTES)
    out.append(goals_line(rows))
    out.append(f"goals missed or not measured: {', '.join(missed) if missed else 'none'}")
    out.append(f"noisy rows (spread wider than ±{SPREAD_LIMIT:.0%}): {', '.join(noisy) or 'none'}")
    return "\n".join(out)


def markdown(meta: dict[str, Any], rows: list[Row]) -> str:
    out = [f"Measured {header(meta)}.", ""]
    out.append("| section | measure | value | peer | ratio | spread (pairs) | goal | met | note |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        c = [x.replace("|", "/") for x in cells(r)]
        note = r.note.replace("|", "/")
        out.append(f"| {r.section} | {' | '.join(c)} | {note} |")
    return "\n".join([*out, "", NOTES, "", goals_line(rows)]) + "\n"
