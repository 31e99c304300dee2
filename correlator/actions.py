"""What the actors' records did to a life: its first actions, the flags they set.

A life keeps its first MAX_ACTIONS actions (time, event) as they came; the
rest are only counted per event. The records also mark it accepted, closed
by the application (a close with an fd) or failed with the error of its
connect_failed record.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from correlator.lifecycles import Conn

MAX_ACTIONS = 16


def note_actions(conn: Conn, ts: list[Any], events: list[str]) -> None:
    """Add the actions in order; past the first MAX_ACTIONS, count them."""
    actions = conn.actions
    if actions is None:
        actions = conn.actions = []
    room = MAX_ACTIONS - len(actions)
    if room > 0:
        actions.extend(zip(ts[:room], events[:room], strict=True))
    if len(events) > room:
        past = conn.actions_past
        if past is None:
            past = conn.actions_past = {}
        for event in events[max(room, 0) :]:
            past[event] = past.get(event, 0) + 1


def apply_flags(acts: pl.DataFrame, conns: dict[int, Conn]) -> None:
    """accepted, app_closed, error and the actions of the lives the records name."""
    ev = pl.col("event")
    per = acts.group_by("life", maintain_order=True).agg(
        ts=pl.col("mono_ns"),
        events=ev,
        accepted=(ev == "accept").any(),
        closed=((ev == "close") & pl.col("fd").is_not_null()).any(),
        error=pl.col("error").filter(ev == "connect_failed").last(),
    )
    for life, ts, events, accepted, closed, error in per.iter_rows():
        conn = conns.get(life)
        if conn is None:
            continue
        note_actions(conn, ts, events)
        if accepted:
            conn.accepted = True
        if closed:
            conn.app_closed = True
        if error:
            conn.error = str(error)
