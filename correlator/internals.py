"""The TCP internals of a run: the probes' records collected, their figures put together.

Fed the recording's KERNEL_RAW batches of the internals probes
(probes/tcp_probe.bpf.c, probes/tcp_events.bpf.c), the bulk senders' own
reports and the retransmit hook's skipped runs; everything else is ignored.
`finish()` gives the counts the expectations read (`internals.*`,
correlator/internals_counts.py), the sentences of the diagnosis
(correlator/internals_sentences.py), the series file's rows and downsampled
series for the plots and the trace, per socket (correlator/socket_figures.py)
from its samples (correlator/tcp_samples.py) and events
(correlator/socket_events.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bus import rawbatch
from bus.internals import INTERNALS
from bus.schema import Envelope, Kind
from correlator import internals_counts, internals_sentences, tcp_samples
from correlator.socket_events import event_rows
from correlator.socket_figures import SocketFigures, socket_keys
from correlator.tcp_counters import counters_window, kernel_counters

# The BPF functions of tcp:tcp_retransmit_skb, classic and raw tracepoint
# (probes/tcp_events.bpf.c): one of them is loaded.
RETRANSMIT_HOOKS = ("tp_tcp_retransmit_skb", "raw_tcp_retransmit_skb")
PLOT_SOCKETS = 8


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
            names, group = np.unique(
                np.array(socket_keys(samples), dtype=object), return_inverse=True
            )
            order = np.argsort(group, kind="stable")
            bounds = np.searchsorted(group[order], np.arange(len(names) + 1))
            for g, key in enumerate(names.tolist()):
                s = samples[order[bounds[g] : bounds[g + 1]]]
                f = figures.setdefault(key, SocketFigures(key))
                rows += tcp_samples.sample_rows(key, s, self.t0)
                tcp_samples.series(f, s, self.t0)
                plots.append(tcp_samples.plot(key, s, self.t0))
        window = counters_window(self.meta)
        in_window = refused_in_window = unseen = 0
        if events is not None:
            more, in_window, refused_in_window, unseen = event_rows(
                events, self.t0, window, figures
            )
            rows += more
        # The bulk senders' sockets first (what the scenario is about), then
        # the busiest.
        plots.sort(key=lambda p: (p["socket"] not in self.bulk, -p["samples"]))
        for p in plots:
            rec = self.bulk.get(p["socket"])
            if rec is not None:
                p["label"] = f"{rec.get('actor')} ({rec.get('congestion') or 'default'})"
            p["marks"] = [r for r in rows if r.get("event") and r["socket"] == p["socket"]][:200]
        counts = internals_counts.counts(figures)
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
        counts["actors"] = internals_counts.actors(self.bulk, figures)
        return {
            "counts": {"internals": counts},
            "sentences": internals_sentences.bulk_sentences(self.bulk, figures)
            + internals_sentences.sentences(
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
