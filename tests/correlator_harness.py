"""Replays a scripted lab (tests/synthetic.py) through the Correlator and
keeps what it wrote: the harness of the tests/test_correlator_*.py that
work on small synthetic recordings. A test helper, not part of the product."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
from synthetic import Actor, Lab, RecordingWriter

from correlator.connection_schema import rows_of_frame
from correlator.correlate import Correlator, CorrelatorConfig
from correlator.recording import RecordingReader
from correlator.result import Result
from correlator.rows import RowsChunk
from correlator.summary import build_summary

T0 = 1_000_000_000
MS = 1_000_000
SERVER = Actor("server", 100)
CLIENT = Actor("client", 200)
LEAKER = Actor("leaker", 300)
BOMBER = Actor("bomber", 400)
ACTORS = {a.name: {"role": a.name, "pid": a.pid} for a in (SERVER, CLIENT, LEAKER, BOMBER)}


class ListSink:
    """The Correlator's sink: its timeline rows and connection rows, in lists."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.conns: list[dict[str, Any]] = []

    def rows(self, chunk: RowsChunk) -> None:
        self.events.extend(chunk.dicts())

    def connections(self, frame: pl.DataFrame) -> None:
        self.conns.extend(rows_of_frame(frame))


class Run:
    """One replay: what the sink got, the correlator, its result and the summary."""

    def __init__(
        self, sink: ListSink, corr: Correlator, result: Result, summary: dict[str, Any]
    ) -> None:
        self.sink, self.corr, self.result, self.summary = sink, corr, result, summary

    @property
    def conns(self) -> list[dict[str, Any]]:
        return [c for c in self.sink.conns if c["kind"] == "connection"]

    def outcomes(self) -> dict[str, int]:
        return {k: v for k, v in self.summary["counts"]["outcomes"].items() if v}


def replay(
    tmp_path: Path,
    script: Callable[[Lab], None],
    meta: dict[str, Any] | None = None,
    batch: int = 1000,
    app_batch: int = 50,
    config: CorrelatorConfig | None = None,
) -> Run:
    path = tmp_path / "recording.msgpack"
    w = RecordingWriter(path, batch=batch, app_batch=app_batch)
    script(Lab(w))
    w.close()
    sink = ListSink()
    m = {"actors": ACTORS, "started_mono_ns": T0} if meta is None else meta
    corr = Correlator(sink, m, config)
    reader = RecordingReader(path)
    for env in reader:
        corr.feed(env)
    result = corr.finish()
    return Run(sink, corr, result, build_summary(result, reader.stats, m))


def echo(n: int, cport: Callable[[int], int] = lambda i: 40000 + i) -> Callable[[Lab], None]:
    def script(lab: Lab) -> None:
        lab.listen(T0, SERVER, 8080)
        for i in range(n):
            t = T0 + (i + 1) * MS
            p = lab.connect(t, CLIENT, SERVER, cport(i), 8080)
            lab.client_close(t + MS // 2, p)

    return script
