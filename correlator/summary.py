"""The run's summary: figures, horizon, diagnosis and expectations together."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from correlator.diagnosis import diagnose
from correlator.expect import check, overall
from correlator.figures import counts, coverage, epoll_view, lab_accepts, losses, sockets
from correlator.horizon import horizon, phase_end_s
from correlator.recording import RecordingStats
from correlator.result import Result


def build_summary(
    c: Result,
    rec: RecordingStats,
    meta: dict[str, Any],
    extra_counts: dict[str, Any] | None = None,
    extra_sentences: list[str] | None = None,
) -> dict[str, Any]:
    """`extra_counts`/`extra_sentences`: figures from outside the recording
    (a two-host run's socket snapshots), checked and told like the rest."""
    cnt = counts(c)
    cnt.update(extra_counts or {})
    cov = coverage(c)
    cnt["coverage"] = {k: v for k, v in cov.items() if isinstance(v, int | float)}
    loss = losses(c, rec, meta)
    cnt["lost"] = {
        "kernel_drops": loss["kernel_drops_total"],
        "close_not_seen": loss["kernel_close_not_seen"],
        "corrupt_frames": rec.corrupt_frames,
        "gaps": len(rec.ledger.gaps),
        "late_events": loss["late_events"],
    }
    started, ended = meta.get("started_mono_ns"), meta.get("ended_mono_ns")
    if isinstance(started, int) and isinstance(ended, int) and ended > started:
        t0, duration_s = started, (ended - started) / 1e9
    elif c.first_ns is not None and c.last_ns > c.first_ns:
        t0, duration_s = c.first_ns, (c.last_ns - c.first_ns) / 1e9
    else:
        t0, duration_s = c.first_ns or 0, 0.0
    k_total = sum(cnt["kernel_events"].values())
    rates = {
        "duration_s": round(duration_s, 3),
        "kernel_events_per_s": round(k_total / duration_s, 1) if duration_s else None,
        "connections_per_s": round(cnt["connections"] / duration_s, 1) if duration_s else None,
    }
    h = horizon(c, rec, meta, t0, duration_s)
    phase_ends = phase_end_s(meta, c)
    expectations = check(meta.get("expected"), cnt, lambda path: h.judge(path, phase_ends))
    diagnosis = diagnose(c, cnt, cov, loss, meta, h) + list(extra_sentences or [])
    if expectations:
        held = sum(1 for e in expectations if e["status"] == "held")
        line = f"{held} of {len(expectations)} expectations held"
        unknown = [e["path"] for e in expectations if e["status"] == "unknown"]
        if unknown:
            why = next(e["why"] for e in expectations if e["status"] == "unknown")
            line += f"; {len(unknown)} unknown ({why}): {', '.join(unknown)}"
        failed = [
            f"{e['path']} {e['expect']} (got {e['actual']})"
            for e in expectations
            if e["status"] == "failed"
        ]
        diagnosis.append(line + ("; failed " + ", ".join(failed) if failed else "") + ".")
    status = overall(expectations)
    return {
        "scenario": meta.get("scenario"),
        "description": meta.get("description"),
        "started_wall": meta.get("started_wall"),
        "interrupted": bool(meta.get("interrupted")),
        "actors": meta.get("actors") or {},
        "phases": meta.get("phases") or [],
        "diagnosis": diagnosis,
        "expectations": expectations,
        # "held", "failed" (any failed) or "unknown" (none failed, some could
        # not be judged: their data is missing); None without expectations.
        "expectations_status": status,
        "expectations_held": {"held": True, "failed": False}.get(status or ""),
        "horizon": asdict(h) | {"complete": h.complete},
        "sockets": sockets(c),
        "counts": cnt,
        "rates": rates,
        "coverage": cov,
        "losses": loss,
        "correlator": {
            "reorder_max_held": c.reorder_max_held,
            "max_live_sockets": c.max_live,
            "settle_max_held": c.settle_max_held,
        },
        "plots": _plot_data(c),
    }


def _plot_data(c: Result) -> dict[str, Any]:
    t0 = c.t0 or (c.first_ns or 0)

    def series(points: list[tuple[int, dict[str, int]]]) -> list[list[Any]]:
        return [[round((ts - t0) / 1e9, 6), vals] for ts, vals in points]

    return {
        "t0_mono_ns": t0,
        "observer_states": series(c.observer_series.points),
        "kernel_states": series(c.kernel_series.points),
        "fds": series(c.fd_series.points),
        "lifetimes_ns": {k: h.as_dict() for k, h in sorted(c.lifetimes.items())},
        "state_durations_ns": {k: h.as_dict() for k, h in sorted(c.state_time.items())},
        "epoll": {
            str(pid): {"actor": c.pid_actor.get(pid), **e} for pid, e in epoll_view(c).items()
        },
        "accept": {
            str(pid): {"actor": c.pid_actor.get(pid), **per} for pid, per in lab_accepts(c).items()
        },
        "phases": [
            {"name": n, "t": round((s - t0) / 1e9, 6)}
            for n, s in zip(c.phase_names, c.phase_starts, strict=True)
        ],
    }
