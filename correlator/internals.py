"""The TCP internals of a run: per-socket series and what they show.

Fed the recording's KERNEL_RAW batches of the internals probes
(probes/tcp_probe.bpf.c, probes/tcp_events.bpf.c); everything else is
ignored. A socket is its own view of the 4-tuple ("laddr:lport >
raddr:rport"): both ends of a lab connection are sockets of this kernel,
each with its own series. `finish()` gives the counts the expectations
read (`internals.*`), the sentences of the diagnosis, the series file's
rows and downsampled series for the plots and the trace.

Zero window: a socket's window is closed from the sample where snd_wnd
(the sender's view) reaches 0 to the next where it is not 0. Probes: the
ACKs that socket received while its window was closed, which are the
peer's answers to its zero-window probes (each sample's `hits` counts the
tracepoint's hits since the socket's previous sample).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bus import rawbatch, rawconvert
from bus.internals import CONG_STATES, INFINITE_SSTHRESH, INTERNALS, SAMPLE_WHY, SOCK_EVENTS
from bus.schema import Envelope, Kind

# The BPF functions of tcp:tcp_retransmit_skb, classic and raw tracepoint
# (probes/tcp_events.bpf.c): one of them is loaded.
RETRANSMIT_HOOKS = ("tp_tcp_retransmit_skb", "raw_tcp_retransmit_skb")
# Samples per socket kept for the plots and trace counters (evenly thinned).
PLOT_POINTS = 600
PLOT_SOCKETS = 8


@dataclass
class SocketFigures:
    key: str
    samples: int = 0
    hits: int = 0
    retransmits: int = 0
    retrans_given_up: int = 0
    cong: list[tuple[float, str]] = field(default_factory=list)
    resets_sent: int = 0
    resets_received: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    zero_periods: int = 0
    zero_closed_s: float = 0.0
    zero_probes: int = 0
    rcv_zero_closed_s: float = 0.0
    bytes_acked: int = 0
    seconds: float = 0.0
    cwnd_max: int = 0
    cwnd_drop: tuple[int, int, float] | None = None  # from, to, at (s)


class Internals:
    """Feed every envelope; finish() once at the end."""

    def __init__(self, t0: int, meta: dict[str, Any] | None = None) -> None:
        self.t0 = t0
        self.meta = meta or {}
        self.samples: list[np.ndarray] = []
        self.events: list[np.ndarray] = []
        # Socket key -> the bulk sender's own report (actors/client.py bulk_sent).
        self.bulk: dict[str, dict[str, Any]] = {}
        # Runs of the retransmit hook the kernel skipped (probes/progstats.py).
        self.retransmit_misses = 0

    def feed(self, env: Envelope) -> None:
        if env.kind is Kind.STATS:
            p = (env.body.get("programs") or {}).get("tcp_events") or {}
            by_hook = p.get("misses_by_hook") or {}
            n = sum(by_hook.get(h, 0) for h in RETRANSMIT_HOOKS)
            if isinstance(n, int):  # a running total
                self.retransmit_misses = max(self.retransmit_misses, n)
            return
        if env.kind is Kind.LOG:
            for rec in env.body["records"]:
                if rec.get("event") == "bulk_sent" and "lport" in rec:
                    key = (
                        f"{rec.get('laddr')}:{rec['lport']} > {rec.get('raddr')}:{rec.get('rport')}"
                    )
                    self.bulk[key] = rec
            return
        if env.kind is not Kind.KERNEL_RAW or env.body.get("probe") not in INTERNALS:
            return
        records = rawbatch.decode_batch(env.body).copy()
        (self.samples if env.body["probe"] == "tcp_probe" else self.events).append(records)

    def records(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The tcp_probe samples and the discrete events, each one array."""
        return _concat(self.samples), _concat(self.events)

    def finish(self) -> dict[str, Any]:
        """{"counts", "sentences", "rows", "plots"}; empty figures without internals."""
        if not self.samples and not self.events:
            return {"counts": {}, "sentences": [], "rows": [], "plots": []}
        samples = _concat(self.samples)
        events = _concat(self.events)
        figures: dict[str, SocketFigures] = {}
        rows: list[dict[str, Any]] = []
        plots: list[dict[str, Any]] = []
        if samples is not None:
            # One group per socket, each in time order (stable within a socket).
            samples = samples[np.argsort(samples["ts"], kind="stable")]
            names, group = np.unique(np.array(_keys(samples), dtype=object), return_inverse=True)
            order = np.argsort(group, kind="stable")
            bounds = np.searchsorted(group[order], np.arange(len(names) + 1))
            for g, key in enumerate(names.tolist()):
                s = samples[order[bounds[g] : bounds[g + 1]]]
                f = figures.setdefault(key, SocketFigures(key))
                rows += self._sample_rows(key, s)
                self._series(f, s)
                plots.append(self._plot(key, s))
        window = counters_window(self.meta)
        in_window = refused_in_window = 0
        # Per socket, in the window: the readings of its own retransmit
        # counter at its hits, and the segments those hits counted.
        readings: dict[str, list[tuple[int, int]]] = {}
        if events is not None:
            keys = _keys(events)
            segs = _segs(events)
            totals = _total_retrans(events)
            order = np.argsort(events["ts"], kind="stable")
            for i in order.tolist():
                e, key = events[i], keys[i]
                f = figures.setdefault(key, SocketFigures(key))
                n = int(e["what"])
                what = SOCK_EVENTS[n] if n < len(SOCK_EVENTS) else str(n)
                t = (int(e["ts"]) - self.t0) / 1e9
                code = int(e["code"])
                if totals[i] and window and window[0] <= int(e["ts"]) <= window[1]:
                    # A retransmit hit's own segments are in its reading,
                    # unless it gave up before the count (code < 0).
                    own = int(segs[i]) if what == "retransmit" and code >= 0 else 0
                    readings.setdefault(key, []).append((totals[i], own))
                row: dict[str, Any] = {"socket": key, "t_s": round(t, 6), "event": what}
                if what == "retransmit" and code < 0:
                    # 6.x (`err`, the tracepoint fires on every return of
                    # __tcp_retransmit_skb): mostly given up before the count
                    # (no memory, still queued from the last time: not in Tcp
                    # RetransSegs); an error of the transmit itself comes
                    # after the count and is in TcpExt TCPRetransFail too.
                    f.retrans_given_up += 1
                    row["error"] = errno.errorcode.get(-code, str(code))
                elif what in ("retransmit", "retransmit_synack"):
                    # code > 0: the qdisc dropped it (NET_XMIT_DROP): counted
                    # in RetransSegs, and in TCPRetransFail as never sent.
                    # Counted in segments, as Tcp RetransSegs counts them.
                    n_segs = int(segs[i])
                    f.retransmits += n_segs
                    if window and window[0] <= int(e["ts"]) <= window[1]:
                        in_window += n_segs
                        if code:
                            refused_in_window += n_segs
                    if n_segs > 1:
                        row["segs"] = n_segs
                    if code:
                        row["qdisc_drop"] = True
                elif what == "cong_state":
                    name = CONG_STATES[code] if 0 <= code < len(CONG_STATES) else str(code)
                    f.cong.append((t, name))
                    row["cong_state"] = name
                elif what == "send_reset":
                    f.resets_sent += 1
                elif what == "receive_reset":
                    f.resets_received += 1
                elif what == "sk_error":
                    name = errno.errorcode.get(code, str(code))
                    f.errors[name] = f.errors.get(name, 0) + 1
                    row["error"] = name
                rows.append(row)
        # The bulk senders' sockets first (what the scenario is about), then
        # the busiest.
        plots.sort(key=lambda p: (p["socket"] not in self.bulk, -p["samples"]))
        for p in plots:
            rec = self.bulk.get(p["socket"])
            if rec is not None:
                p["label"] = f"{rec.get('actor')} ({rec.get('congestion') or 'default'})"
            p["marks"] = [r for r in rows if r.get("event") and r["socket"] == p["socket"]][:200]
        counts = _counts(figures)
        unseen = _unseen(readings)
        kernel = kernel_counters(self.meta)
        if kernel:
            counts["kernel"] = kernel
            # What the tracepoint saw between the two readings of the
            # counters (the probes attach after the first and stop after
            # the last): the figure to hold against RetransSegs.
            counts["retransmits_between_readings"] = in_window
            # Of those, the ones the qdisc refused (6.x `err` > 0). On 6.1
            # and 5.10 the tracepoint fires only for a retransmission sent,
            # so there RetransSegs = seen + TCPRetransFail; on 6.x with
            # `err`, RetransSegs = seen - refused + TCPRetransFail.
            counts["retransmits_refused_between_readings"] = refused_in_window
            # Counted by the sockets between two of their hits with no hit
            # of their own (raw tracepoints only: docs/probes.md). Where the
            # tracepoint has no `err` (6.1, 5.10) a failed transmit fires no
            # hit either: there these include TCPRetransFail's.
            counts["retransmits_unseen_between_readings"] = unseen
            # Counted by the kernel but never sent: the transmit failed.
            counts["retransmits_failed"] = kernel.get("TCPRetransFail", 0)
            # Tracepoint hits whose program the kernel did not run (another
            # BPF program was running on that CPU), machine-wide: the lab's
            # retransmits among them are counted in RetransSegs, not seen.
            counts["retransmits_missed"] = self.retransmit_misses
            if "TCPWinProbe" in kernel:
                # The probes sent, as the kernel counts them; the ACKs while
                # closed (zero_window.acks) also hold window updates still at 0.
                counts["zero_window"]["probes"] = kernel["TCPWinProbe"]
        counts["actors"] = self._actors(figures)
        return {
            "counts": {"internals": counts},
            "sentences": self._bulk_sentences(figures)
            + _sentences(
                figures,
                kernel,
                set(self.bulk),
                in_window,
                refused_in_window,
                self.retransmit_misses,
                unseen,
            ),
            "rows": rows,
            "plots": plots[:PLOT_SOCKETS],
        }

    def _actors(self, figures: dict[str, SocketFigures]) -> dict[str, Any]:
        """Per bulk-sending actor: its transfer as it reported it, and what
        the kernel showed of its socket."""
        out: dict[str, Any] = {}
        for key, rec in self.bulk.items():
            f = figures.get(key, SocketFigures(key))
            seconds = float(rec.get("seconds") or 0)
            out[str(rec.get("actor"))] = {
                "bytes": int(rec.get("bytes") or 0),
                "seconds": round(seconds, 3),
                "mbit_s": round(int(rec.get("bytes") or 0) * 8 / seconds / 1e6, 2)
                if seconds
                else 0,
                "retransmits": f.retransmits,
                "cong_states": _entered(f),
                "cwnd_max": f.cwnd_max,
                "zero_window_s": round(f.zero_closed_s, 3),
                "eagain": int(rec.get("eagain") or 0),
            }
        return out

    def _bulk_sentences(self, figures: dict[str, SocketFigures]) -> list[str]:
        out = []
        for key, rec in self.bulk.items():
            f = figures.get(key)
            seconds = float(rec.get("seconds") or 0)
            n = int(rec.get("bytes") or 0)
            text = f"{rec.get('actor')} ({rec.get('congestion') or 'default'}): {n / 1e6:.1f} MB"
            if seconds:
                text += f" in {seconds:.1f} s, {n * 8 / seconds / 1e6:.1f} Mbit/s"
            if f is not None:
                text += f"; {f.retransmits} segments retransmitted"
                if f.cwnd_drop and f.retransmits:
                    a, b, t = f.cwnd_drop
                    text += f"; cwnd fell from {a} to {b} at {t:.1f} s"
                entered = {k: v for k, v in _entered(f).items() if k != "Open"}
                if entered:
                    text += "; entered " + ", ".join(f"{k} {v}x" for k, v in entered.items())
                if f.zero_periods:
                    # The client polls for writability (actors/client.py): it
                    # waits while its send buffer is full, EAGAIN only in a race.
                    text += (
                        f"; while the window was closed it waited for its send buffer "
                        f"({int(rec.get('eagain') or 0)} sends returned EAGAIN)"
                    )
            out.append(text + ".")
        return out

    def _sample_rows(self, key: str, s: np.ndarray) -> list[dict[str, Any]]:
        t = (s["ts"].astype(np.int64) - self.t0) / 1e9
        in_flight = (s["snd_nxt"] - s["snd_una"]).astype(np.uint32)
        why = [SAMPLE_WHY[w] if w < len(SAMPLE_WHY) else str(w) for w in s["why"].tolist()]
        cols = zip(
            t.round(6).tolist(),
            s["snd_cwnd"].tolist(),
            s["ssthresh"].tolist(),
            s["srtt_us"].tolist(),
            s["snd_wnd"].tolist(),
            s["rcv_wnd"].tolist(),
            in_flight.tolist(),
            s["hits"].tolist(),
            why,
            strict=True,
        )
        names = ("t_s", "cwnd", "ssthresh", "srtt_us", "snd_wnd", "rcv_wnd", "in_flight", "hits")
        out = []
        for row in cols:
            d = {"socket": key, **dict(zip(names, row[:8], strict=True)), "why": row[8]}
            if d["ssthresh"] >= INFINITE_SSTHRESH:
                d["ssthresh"] = None
            out.append(d)
        return out

    def _series(self, f: SocketFigures, s: np.ndarray) -> None:
        ts = s["ts"].astype(np.int64)
        f.samples = len(s)
        f.hits = int(s["hits"].sum())
        cwnd = s["snd_cwnd"].astype(np.int64)
        f.cwnd_max = int(cwnd.max())
        if len(cwnd) > 1:
            drops = cwnd[:-1] - cwnd[1:]
            i = int(np.argmax(drops))
            if drops[i] > 0:
                f.cwnd_drop = (int(cwnd[i]), int(cwnd[i + 1]), (int(ts[i + 1]) - self.t0) / 1e9)
        una = s["snd_una"].astype(np.uint32)
        f.bytes_acked = int(((una[1:] - una[:-1]).astype(np.uint32)).astype(np.int64).sum())
        f.seconds = (int(ts[-1]) - int(ts[0])) / 1e9
        f.zero_periods, f.zero_closed_s, f.zero_probes = _closed(ts, s["snd_wnd"], s["hits"])
        _, f.rcv_zero_closed_s, _ = _closed(ts, s["rcv_wnd"], s["hits"])

    def _plot(self, key: str, s: np.ndarray) -> dict[str, Any]:
        step = max(1, len(s) // PLOT_POINTS)
        # Keep every zero-window crossing and cwnd change beyond the thinning.
        keep = np.zeros(len(s), bool)
        keep[::step] = True
        keep[s["why"] != SAMPLE_WHY.index("period")] = True
        if keep.sum() > 4 * PLOT_POINTS:
            keep[:] = False
            keep[:: max(1, len(s) // (4 * PLOT_POINTS))] = True
        t = (s["ts"][keep].astype(np.int64) - self.t0) / 1e9
        ssthresh = s["ssthresh"][keep].astype(np.int64)
        return {
            "socket": key,
            "samples": len(s),
            "t": t.round(6).tolist(),
            "cwnd": s["snd_cwnd"][keep].tolist(),
            "ssthresh": np.where(ssthresh >= INFINITE_SSTHRESH, -1, ssthresh).tolist(),
            "srtt_us": s["srtt_us"][keep].tolist(),
            "snd_wnd": s["snd_wnd"][keep].tolist(),
            "rcv_wnd": s["rcv_wnd"][keep].tolist(),
            "in_flight": (s["snd_nxt"][keep] - s["snd_una"][keep]).astype(np.uint32).tolist(),
        }


def _concat(parts: list[np.ndarray]) -> np.ndarray | None:
    if not parts:
        return None
    # One layout per probe in a recording; a recording mixing kernels would
    # differ, so each part is reduced to the fields read here first.
    if len({p.dtype for p in parts}) > 1:
        names = [
            n for n in parts[0].dtype.names or () if all(n in (p.dtype.names or ()) for p in parts)
        ]
        parts = [p[names] for p in parts]
    return np.concatenate(parts)


def _keys(r: np.ndarray) -> list[str]:
    saddr = rawconvert.addr_text(r["family"], r["saddr"])
    daddr = rawconvert.addr_text(r["family"], r["daddr"])
    return [
        f"{sa}:{sp} > {da}:{dp}"
        for sa, sp, da, dp in zip(
            saddr, r["sport"].tolist(), daddr, r["dport"].tolist(), strict=True
        )
    ]


def _total_retrans(events: np.ndarray) -> list[int]:
    """The socket's own retransmit counter at each event (raw tracepoints);
    0 where the event has none (classic tracepoints, other hooks, older
    recordings)."""
    if "total_retrans" not in (events.dtype.names or ()):
        return [0] * len(events)
    return [int(v) for v in events["total_retrans"].tolist()]


def _unseen(readings: dict[str, list[tuple[int, int]]]) -> int:
    """Segments the sockets counted (tcp_sock.total_retrans, added to with
    Tcp RetransSegs) that none of their retransmit hits reported: per
    socket, what its counter moved between its first and last reading in
    the window, less the segments of the hits after the first (the first
    reading already holds its own hit's)."""
    return sum(
        values[-1][0] - values[0][0] - sum(own for _, own in values[1:])
        for values in readings.values()
    )


def _segs(events: np.ndarray) -> np.ndarray:
    """Segments per event: the skb's pcount (probes/tcp_events.bpf.c);
    1 in recordings made before the probe read it."""
    if "segs" not in (events.dtype.names or ()):
        return np.ones(len(events), np.int64)
    return np.maximum(events["segs"].astype(np.int64), 1)


def _closed(ts: np.ndarray, wnd: np.ndarray, hits: np.ndarray) -> tuple[int, float, int]:
    """Periods with the window at 0, their total seconds, and the hits while
    closed (from the sample after the one that closed it up to the one that
    reopened it, less the reopening hit itself)."""
    periods, closed_ns, answered = 0, 0, 0
    start: int | None = None
    for i in range(len(ts)):
        zero = int(wnd[i]) == 0
        if zero and start is None:
            start = i
        elif start is not None and (not zero or i == len(ts) - 1):
            periods += 1
            closed_ns += int(ts[i]) - int(ts[start])
            answered += int(hits[start + 1 : i + 1].sum()) - (0 if zero else 1)
            start = None
    return periods, closed_ns / 1e9, max(answered, 0)


def _entered(f: SocketFigures) -> dict[str, int]:
    out: dict[str, int] = {}
    for _, name in f.cong:
        out[name] = out.get(name, 0) + 1
    return out


def kernel_counters(meta: dict[str, Any]) -> dict[str, int]:
    """The kernel's TCP counters over the run, summed over the hosts
    (lab/netstat.py, in run.json's lab.tcp_counters): end - start."""
    out: dict[str, int] = {}
    hosts = ((meta.get("lab") or {}).get("tcp_counters") or {}).values()
    for c in hosts:
        start, end = c.get("start") or {}, c.get("end") or {}
        for k, v in end.items():
            name = k.partition(".")[2]
            if k in start and name:
                out[name] = out.get(name, 0) + int(v) - int(start[k])
    return out


def counters_window(meta: dict[str, Any]) -> tuple[int, int] | None:
    """(first start reading, last end reading) in CLOCK_MONOTONIC ns, or None."""
    hosts = list(((meta.get("lab") or {}).get("tcp_counters") or {}).values())
    starts = [int((c.get("start") or {}).get("mono_ns", 0)) for c in hosts]
    ends = [int((c.get("end") or {}).get("mono_ns", 0)) for c in hosts]
    if not hosts or not all(starts) or not all(ends):
        return None
    return min(starts), max(ends)


def _counts(figures: dict[str, SocketFigures]) -> dict[str, Any]:
    fs = list(figures.values())
    cong: dict[str, int] = {}
    errors: dict[str, int] = {}
    for f in fs:
        for _, name in f.cong:
            cong[name] = cong.get(name, 0) + 1
        for name, n in f.errors.items():
            errors[name] = errors.get(name, 0) + n
    return {
        "sockets": len(fs),
        "samples": sum(f.samples for f in fs),
        "hits": sum(f.hits for f in fs),
        "retransmits": sum(f.retransmits for f in fs),
        "retransmits_given_up": sum(f.retrans_given_up for f in fs),
        "cong_states": cong,
        "resets_sent": sum(f.resets_sent for f in fs),
        "resets_received": sum(f.resets_received for f in fs),
        "errors": errors,
        "cwnd_max": max((f.cwnd_max for f in fs), default=0),
        "bytes_acked": sum(f.bytes_acked for f in fs),
        "zero_window": {
            "sockets": sum(1 for f in fs if f.zero_periods),
            "periods": sum(f.zero_periods for f in fs),
            "closed_s": round(max((f.zero_closed_s for f in fs), default=0.0), 3),
            "acks": sum(f.zero_probes for f in fs),
            "probes": sum(f.zero_probes for f in fs),
        },
    }


def _sentences(
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
            if f.cwnd_drop and f.retransmits:
                a, b, t = f.cwnd_drop
                text += f"; cwnd fell from {a} to {b} at {t:.1f} s"
            entered = {k: v for k, v in _entered(f).items() if k != "Open"}
            if entered:
                text += "; entered " + ", ".join(f"{k} {v}x" for k, v in entered.items())
            out.append(text + ".")
        for name, n in f.errors.items():
            out.append(f"{f.key}: the kernel reported {name} to the application ({n}x).")
    return out
