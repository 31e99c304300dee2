"""The TCP internals of each connection: one summary row per connection id.

The internals probes key their records by the socket's own 4-tuple (skaddr
only from 6.12), while connections.jsonl has one row per socket
incarnation. Each record goes to the incarnation of its 4-tuple that had
started at its time (an as-of join on start_ns), else to the next one (a
SYN-ACK retransmitted before the accepted socket exists). Samples and events
stay columns throughout: polars joins and group-bys, no per-record Python.

Columns (null where a connection has no internals record):
  retransmits         segments retransmitted (tcp_skb_pcount each, as Tcp RetransSegs)
  cong_changes        congestion state changes (tcp_cong_state_set, 6.1+)
  cwnd_min, cwnd_max  congestion window over its tcp_probe samples, segments
  zero_window_s       time its peer's window (snd_wnd) was 0, from the samples
  zero_window_probes  ACKs it received while that window was closed: the
                      answers to its zero-window probes
  resets_sent, resets_received
  error               the errno the kernel last reported to its application
"""

from __future__ import annotations

import errno
from typing import Any

import numpy as np
import polars as pl

from bus import rawconvert
from bus.internals import SOCK_EVENTS

FIELDS: dict[str, Any] = {
    "retransmits": pl.Int64,
    "cong_changes": pl.Int64,
    "cwnd_min": pl.Int64,
    "cwnd_max": pl.Int64,
    "zero_window_s": pl.Float64,
    "zero_window_probes": pl.Int64,
    "resets_sent": pl.Int64,
    "resets_received": pl.Int64,
    "error": pl.String,
}
_TUPLE = ["laddr", "lport", "raddr", "rport"]
_EV = {name: i for i, name in enumerate(SOCK_EVENTS)}


def _frame(r: np.ndarray, cols: dict[str, np.ndarray]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "ts": r["ts"].astype(np.int64),
            "laddr": rawconvert.addr_text(r["family"], r["saddr"]),
            "lport": r["sport"].astype(np.int64),
            "raddr": rawconvert.addr_text(r["family"], r["daddr"]),
            "rport": r["dport"].astype(np.int64),
            **cols,
        }
    )


def _assign(records: pl.DataFrame, conns: pl.DataFrame) -> pl.DataFrame:
    """records with the id of their connection; those of none left out."""
    records = records.sort("ts")
    back, ahead = (
        records.join_asof(
            conns,
            left_on="ts",
            right_on="start_ns",
            by=_TUPLE,
            strategy=way,
            check_sortedness=False,
        )
        for way in ("backward", "forward")
    )
    return back.with_columns(id=pl.col("id").fill_null(ahead["id"])).filter(
        pl.col("id").is_not_null()
    )


def per_connection(
    samples: np.ndarray | None, events: np.ndarray | None, conns: pl.DataFrame
) -> pl.DataFrame:
    """id and FIELDS for every connection with an internals record.

    conns: id, laddr, lport, raddr, rport, start_ns of connections.jsonl's rows.
    """
    conns = conns.select("id", *_TUPLE, "start_ns").drop_nulls().sort("start_ns")
    parts: list[pl.DataFrame] = []
    if samples is not None and len(samples):
        s = _assign(
            _frame(
                samples,
                {
                    "cwnd": samples["snd_cwnd"].astype(np.int64),
                    "zero": samples["snd_wnd"] == 0,
                    "hits": samples["hits"].astype(np.int64),
                },
            ),
            conns,
        ).sort("id", "ts")
        # The window is closed from a sample at 0 to the next sample of the
        # same socket (correlator/tcp_samples.py's periods, as sums of steps).
        nxt = pl.col("ts").shift(-1).over("id")
        step = pl.col("zero") & nxt.is_not_null()
        reopened = step & ~pl.col("zero").shift(-1).over("id").fill_null(True)
        s = s.with_columns(
            closed_ns=pl.when(step).then(nxt - pl.col("ts")).otherwise(0),
            answered=pl.when(step).then(pl.col("hits").shift(-1).over("id")).otherwise(0)
            - reopened.cast(pl.Int64),
        )
        parts.append(
            s.group_by("id").agg(
                cwnd_min=pl.col("cwnd").min(),
                cwnd_max=pl.col("cwnd").max(),
                zero_window_s=(pl.col("closed_ns").sum() / 1e9).round(6),
                zero_window_probes=pl.col("answered").sum().clip(lower_bound=0),
            )
        )
    if events is not None and len(events):
        segs = (
            np.maximum(events["segs"].astype(np.int64), 1)
            if "segs" in (events.dtype.names or ())
            else np.ones(len(events), np.int64)
        )
        e = _assign(
            _frame(
                events,
                {
                    "what": events["what"].astype(np.int64),
                    "code": events["code"].astype(np.int64),
                    "segs": segs,
                },
            ),
            conns,
        ).sort("id", "ts")
        what = pl.col("what")
        # A retransmit given up before the device (err < 0, 6.x) is not one.
        sent = what.is_in([_EV["retransmit"], _EV["retransmit_synack"]]) & (pl.col("code") >= 0)
        parts.append(
            e.group_by("id").agg(
                retransmits=pl.col("segs").filter(sent).sum(),
                cong_changes=(what == _EV["cong_state"]).sum().cast(pl.Int64),
                resets_sent=(what == _EV["send_reset"]).sum().cast(pl.Int64),
                resets_received=(what == _EV["receive_reset"]).sum().cast(pl.Int64),
                error_code=pl.col("code").filter(what == _EV["sk_error"]).last(),
            )
        )
    out = pl.DataFrame(schema={"id": conns.schema["id"]})
    for p in parts:
        out = out.join(p, on="id", how="full", coalesce=True)
    if "error_code" in out.columns:
        out = out.with_columns(
            error=pl.col("error_code").map_elements(
                lambda c: errno.errorcode.get(c, str(c)), return_dtype=pl.String
            )
        ).drop("error_code")
    counts = ["retransmits", "cong_changes", "resets_sent", "resets_received"]
    out = out.with_columns(pl.col(k).fill_null(0) for k in counts if k in out.columns)
    return out.select(
        "id",
        *[
            pl.col(k).cast(t) if k in out.columns else pl.lit(None, dtype=t).alias(k)
            for k, t in FIELDS.items()
        ],
    ).sort("id")
