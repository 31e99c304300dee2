"""The correlator on synthetic recordings: time order across late and
interleaved batches, and memory bounded by the live connections."""

from __future__ import annotations

from pathlib import Path

import pytest
from correlator_harness import ACTORS, MS, T0, ListSink, echo, replay

from correlator.correlate import Correlator, CorrelatorConfig


def test_out_of_order_batches_come_out_in_time_order(tmp_path: Path) -> None:
    """App records sent one per batch arrive long before the kernel batch that
    covers the same time; the timeline is still in time order, nothing late."""
    run = replay(tmp_path, echo(30), batch=1000, app_batch=1)
    ts = [r["ts"] for r in run.sink.events]
    assert sorted(ts) == ts
    assert 0 == run.result.late_events
    assert run.result.reorder_max_held > 1
    in_order = replay(tmp_path, echo(30), batch=1, app_batch=1)
    assert in_order.outcomes() == run.outcomes()
    assert 100.0 == run.summary["coverage"]["app_connections_pct"]


def test_event_beyond_the_window_is_counted_late_not_lost(tmp_path: Path) -> None:
    """A batch that arrives after the watermark passed its time is still
    processed and counted as late."""
    cfg = CorrelatorConfig(window_ns=0, slack_ns=0)
    run = replay(tmp_path, echo(30), batch=1000, app_batch=1, config=cfg)
    assert run.result.late_events > 0
    assert run.result.late_events == run.summary["losses"]["late_events"]
    # Per connection 10 state events, 1 accept4, 5 app records; plus the listen pair.
    assert 30 * 16 + 2 == len(run.sink.events)


def test_memory_is_bounded_by_live_connections(tmp_path: Path) -> None:
    """Thousands of sequential connections, handled in chunks of 2000 items,
    never hold more than a handful of sockets, reorder entries or pending rows
    at once; nothing stays indexed at the end."""
    cfg = CorrelatorConfig(chunk_items=2000)
    short = replay(tmp_path, echo(1000), batch=200, app_batch=20, config=cfg)
    run = replay(tmp_path, echo(4000), batch=200, app_batch=20, config=cfg)
    assert 8000 == len(run.conns)
    assert run.result.max_live <= 3
    # The reorder heap and the rows waiting for their grace hold a time
    # window (or a chunk), not the run.
    assert run.result.reorder_max_held <= short.result.reorder_max_held * 1.1
    assert run.result.settle_max_held <= short.result.settle_max_held * 1.1
    j = run.corr.joins
    idx = j.index
    assert idx.idx.is_empty() and idx.claims.is_empty() and idx.sets.is_empty() and not j.failed
    # Only the listener is still open when the recording ends.
    assert 1 == len(run.corr.lives.open_by_sk) and not j.conns and j.owners.changes.is_empty()
    assert j.actions.first.is_empty() and j.actions.past.is_empty()


@pytest.mark.parametrize("window_ns", [0, 2_000_000_000])
def test_results_do_not_depend_on_the_window(tmp_path: Path, window_ns: int) -> None:
    """In-order input gives the same lifecycles whatever the reorder window."""
    cfg = CorrelatorConfig(window_ns=window_ns)
    run = replay(tmp_path, echo(5), batch=1, app_batch=1, config=cfg)
    assert {"time_wait": 5, "clean": 5} == run.outcomes()
    assert 0 == run.result.late_events


def test_interleaved_probe_streams_with_a_sudden_backlog_stay_in_order(tmp_path: Path) -> None:
    """One probe process ships three ring buffers' batches interleaved; when
    one of them falls 400 ms behind (a burst), its events still come out in
    time order: the probes are separate streams and a lag may grow."""
    from bus.schema import Envelope, Kind

    sink = ListSink()
    corr = Correlator(sink, {"actors": ACTORS})
    seq = 0

    def send(probe: str, ts: list[int], sent: int) -> None:
        nonlocal seq
        seq += 1
        evs = [
            {"type": probe, "ts": t, "pid": 100, "tid": 100, "fd": -1, "errno": 11, "ready": 1}
            for t in ts
        ]
        corr.feed(Envelope(Kind.KERNEL, "probes", seq, sent, {"probe": probe, "events": evs}))

    # epoll keeps up (10 ms behind); accept starts in step, then its buffer
    # backs up for 400 ms.
    for i in range(100):
        now = T0 + i * 10 * MS
        send("epoll", [now - 10 * MS], now)
        if i == 0:
            send("accept", [now - 5 * MS], now)
        if i % 50 == 49:
            send("accept", [now - 400 * MS + k * MS for k in range(40)], now)
    result = corr.finish()
    ts = [r["ts"] for r in sink.events]
    assert sorted(ts) == ts
    assert (0, 181) == (result.late_events, len(ts))


def test_cycle_collector_is_back_after_a_replay(tmp_path: Path) -> None:
    """The correlator pauses Python's cycle collector while it works on a
    chunk and freezes what each chunk leaves: afterwards it is on again,
    nothing is left frozen, and a caller who had it off keeps it off."""
    import gc

    assert gc.isenabled()
    assert 0 == gc.get_freeze_count()
    replay(tmp_path, echo(50), batch=20, app_batch=5, config=CorrelatorConfig(chunk_items=100))
    assert gc.isenabled()
    assert 0 == gc.get_freeze_count()
    gc.disable()
    try:
        (tmp_path / "off").mkdir()
        replay(tmp_path / "off", echo(5), batch=20, app_batch=5)
        assert not gc.isenabled()
    finally:
        gc.enable()
