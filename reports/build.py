"""build_reports: every output of a run rebuilt from its raw recording."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from correlator.barrier import Barrier
from correlator.correlate import Correlator, CorrelatorConfig
from correlator.internals import Internals
from correlator.recording import RecordingReader, read_run_meta, recording_path
from correlator.summary import build_summary
from reports.conn_internals import add_internals
from reports.html import write_html
from reports.packets import handshakes, wire_counts
from reports.packets import sentences as packet_sentences
from reports.series import series_counters, write_series
from reports.snapshots import LinkSink, sentences, snapshot_counts
from reports.writers import RunSink, TraceWriter


def build_reports(run_dir: Path, config: CorrelatorConfig | None = None) -> dict[str, Any]:
    """Correlate the run's recording and write every output; return the summary.

    Raises NoRecordingError (no recording) or RunMetaError (bad run.json),
    both ReportError with a one-line message saying what to do.
    """
    run_dir = Path(run_dir)
    rec_path = recording_path(run_dir)
    meta = read_run_meta(run_dir)
    reader = RecordingReader(rec_path)
    t0 = int(meta.get("started_mono_ns") or 0)
    trace = TraceWriter(run_dir / "trace.json.tmp", t0)
    # A two-host run's connections also say where each end lives and what it negotiated.
    sink = LinkSink(run_dir, trace, meta) if meta.get("lab") else RunSink(run_dir, trace)
    corr = Correlator(sink, meta, config)
    internals = Internals(t0, meta)
    barrier = Barrier()
    try:
        for env in reader:
            if trace.t0 == 0:
                # No run.json start: the first envelope is time zero.
                trace.t0 = env.mono_ns
            corr.feed(env)
            internals.feed(env)
            barrier.feed(env)
        result = corr.finish()
    except BaseException:
        sink.close(complete=False)  # no half-written Parquet left behind
        raise
    sink.close()
    add_internals(run_dir, internals)
    tcp = internals.finish()
    write_series(run_dir, tcp)
    packets = handshakes(run_dir)
    fd_counts, fd_sentences = barrier.finish(run_dir)
    extra = {**snapshot_counts(run_dir), **wire_counts(packets), **tcp["counts"], **fd_counts}
    summary = build_summary(
        result,
        reader.stats,
        meta,
        extra,
        sentences(extra) + packet_sentences(packets) + tcp["sentences"] + fd_sentences,
    )
    if tcp["plots"]:
        summary["tcp_series"] = tcp["plots"]
        series_counters(trace, tcp["plots"], (t0 - trace.t0) / 1e9 if t0 else 0.0)
    if packets is not None:
        summary["packets"] = {k: v for k, v in packets.items() if k != "all_syns"}
    plots = summary["plots"]
    offset_s = (plots["t0_mono_ns"] - trace.t0) / 1e9
    shifted = [[t + offset_s, v] for t, v in plots["observer_states"]]
    trace.counters("TCP states (observer, TIME_WAIT included)", shifted)
    shifted = [[t + offset_s, v] for t, v in plots["kernel_states"]]
    trace.counters("TCP states (tracepoint, live sockets)", shifted)
    trace.close()
    os.replace(run_dir / "trace.json.tmp", run_dir / "trace.json")
    summary["outputs"] = {
        "events": sink.n_events,
        "connections": sink.n_connections,
        "trace_connections": trace.connections,
        "trace_connections_left_out": trace.left_out,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    write_html(run_dir / "report.html", summary)
    return summary
