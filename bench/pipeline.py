"""Pipeline capacity: the bus into the hub, and the correlator replaying.

    python -m bench.pipeline send-bus ENDPOINT CONTROL BATCHES LAYOUT   (child: EventSender)
    python -m bench.pipeline send-raw ENDPOINT BATCHES LAYOUT   (child: raw PUSH)
    python -m bench.pipeline replay RUN_DIR MODE         (child: read | correlate)
    python -m bench.pipeline generate KIND N [dict]      (child: held | stream recording)

Children run in their own process so that timing and peak RSS are theirs
alone. The synthetic recordings come from tests/synthetic.py through
the generators in bench/correlator_replay.py, with their tcp_state, accept and epoll batches
as raw ring records (KERNEL_RAW), as real runs record them: the shape the
correlator's speed rows are judged on (the 10M memory row: see BigReplay).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq

from bench.common import OUT, PY, BenchError, log
from bench.pairs import Row, median
from bus.endpoints import ipc_endpoints, make_run_dir
from bus.hub import Hub
from bus.rawbatch import Layout, count, dtype_of, make_body
from bus.schema import Kind

BATCH = 1000  # probes/process.py BATCH_MAX: the probe process's batch size (records)
PROGRESS_EVERY = 1_000_000  # replay children report RSS every this many events


def tcp_state_layout() -> Layout:
    """The layout of tcp_state's records, from bcc's own view of events.h."""
    from bcc import BPF

    from probes.layout import event_layout
    from probes.program import cflags, program_text

    bpf = BPF(
        text=program_text("tcp_state").encode(), cflags=cflags("tcp_state", "tracepoint", "ringbuf")
    )
    try:
        return event_layout(bpf)
    finally:
        bpf.cleanup()


def tcp_state_records(layout: Layout, n: int) -> bytes:
    """n tcp_state records as the ring holds them (SYN_SENT -> ESTABLISHED)."""
    records = np.zeros(n, dtype=dtype_of(layout))
    i = np.arange(n)
    records["ts"] = 1_000_000_000 + i * 1000
    # In uint64: the kernel address does not fit numpy 2's int64 arithmetic.
    records["skaddr"] = np.uint64(0xFFFF888100000000) + (i % 50000).astype(np.uint64) * 2048
    records["pid"] = records["tid"] = 4242
    records["comm"] = b"bomber"
    records["family"] = 2
    records["saddr"][:, :4] = records["daddr"][:, :4] = (127, 0, 0, 1)
    records["sport"], records["dport"] = 40000 + i % 20000, 8080
    records["oldstate"], records["newstate"] = 2, 1
    return records.tobytes()


# --------------------------------------------------------------------------- bus


def send_bus(endpoint: str, control: str, batches: int, layout_json: str) -> None:
    """What the probe process does: hello, then KERNEL_RAW batches through EventSender."""
    from bus.transport import ControlClient, EventSender

    layout = json.loads(layout_json)
    body = make_body("tcp_state", layout, tcp_state_records(layout, BATCH))
    ctl = ControlClient(control, "probes")
    sender = EventSender(endpoint, "probes", session=ctl.hello("probes"))
    for _ in range(batches):
        sender.send(Kind.KERNEL_RAW, body)
    sender.eof()
    sender.close(linger_ms=30_000)
    ctl.close()


def send_raw(endpoint: str, batches: int, layout_json: str) -> None:
    """The peer: the same batches as bare msgpack over a bare PUSH socket."""
    layout = json.loads(layout_json)
    body = make_body("tcp_state", layout, tcp_state_records(layout, BATCH))
    ctx = zmq.Context(io_threads=1)
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 1000)
    sock.connect(endpoint)
    # The start time goes first: the receiver times from the sender's start,
    # since the high-water marks let a fast sender queue the whole run
    # before the receiver reads its first frame.
    sock.send(str(time.monotonic_ns()).encode())
    for _ in range(batches):
        sock.send(msgpack.packb(body, use_bin_type=True))
    sock.close(linger=120_000)
    ctx.term()


def bus_run(batches: int, layout: str) -> float:
    """Events/s from a sender process through EventSender into a Hub here."""
    run_dir = make_run_dir()
    ep = ipc_endpoints(run_dir)
    hub = Hub(ep.events, ep.control)
    argv = [PY, "-m", "bench.pipeline", "send-bus", ep.events, ep.control, str(batches), layout]
    child = subprocess.Popen(argv)
    try:
        got = 0
        t0 = 0
        deadline = time.monotonic() + 120
        while "probes" not in hub.events_ledger.eof_seq:
            if time.monotonic() > deadline:
                raise BenchError("bus sender did not finish in 120 s")
            for _c, env in hub.poll(100):
                if env.kind is Kind.KERNEL_RAW:
                    # From the first batch's making (sender's clock, the same
                    # CLOCK_MONOTONIC): the queues cannot hide the sender's cost.
                    t0 = t0 or env.mono_ns
                    got += count(env.body)
        secs = (time.monotonic_ns() - t0) / 1e9
        if got != batches * BATCH or hub.events_ledger.gaps:
            raise BenchError(f"bus run lost events: {got} of {batches * BATCH}")
    finally:
        child.wait(timeout=60)
        hub.close()
        shutil.rmtree(run_dir, ignore_errors=True)
    return got / secs


def raw_run(batches: int, layout: str) -> float:
    run_dir = make_run_dir()
    endpoint = f"ipc://{run_dir}/raw.sock"
    ctx = zmq.Context(io_threads=1)
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVTIMEO, 60_000)  # a lost sender is an error, not a hang
    sock.bind(endpoint)
    argv = [PY, "-m", "bench.pipeline", "send-raw", endpoint, str(batches), layout]
    child = subprocess.Popen(argv)
    try:
        if not sock.poll(60_000):
            raise BenchError("raw sender sent nothing in 60 s")
        t0 = int(sock.recv())
        got = 0
        # The receiver knows how many to expect: no end marker needed.
        while got < batches * BATCH:
            got += count(msgpack.unpackb(sock.recv(), raw=False))
        secs = (time.monotonic_ns() - t0) / 1e9
    except zmq.Again:
        raise BenchError(f"raw sender went silent after {got} events") from None
    finally:
        child.wait(timeout=60)
        sock.close(linger=0)
        ctx.term()
        shutil.rmtree(run_dir, ignore_errors=True)
    return got / secs


def bus_capacity(batches: int, rounds: int, bomber_event_rate: float) -> list[Row]:
    bus: list[float] = []
    raw: list[float] = []
    layout = json.dumps(tcp_state_layout())
    for r in range(rounds):
        for kind in ("bus", "raw") if r % 2 == 0 else ("raw", "bus"):
            (bus if kind == "bus" else raw).append(
                bus_run(batches, layout) if kind == "bus" else raw_run(batches, layout)
            )
    capacity = median(bus)
    return [
        Row(
            "bus_capacity",
            "Pipeline capacity",
            f"KERNEL_RAW batches of {BATCH} records: EventSender -> ipc -> Hub "
            "(decode + validate) vs raw msgpack + zmq PUSH/PULL",
            capacity,
            "events/s",
            median(raw),
            "raw msgpack+zmq",
            runs={"bus": bus, "raw": raw},
        ),
        Row(
            "bus_vs_bomber",
            "Pipeline capacity",
            "bus -> hub capacity vs the full-speed bomber's kernel event rate",
            capacity,
            "events/s",
            bomber_event_rate,
            "bomber events/s",
            note="the bus alone; the probe process's own reading is in the loss onset row",
        ),
    ]


# --------------------------------------------------------------------------- correlator


def rss_mb() -> float:
    """Peak RSS of this process image. Not ru_maxrss: Linux carries that over
    exec from the pre-exec image, i.e. the bench runner's own size."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def replay_child(run_dir: Path, mode: str, every: int = PROGRESS_EVERY) -> None:
    """Replay a recording (read only, or correlate into a sink that discards);
    print a JSON line every `every` correlated events and one at the end."""
    from bench.correlator_replay import NullSink, read_items
    from correlator.correlate import Correlator
    from correlator.recording import RecordingReader, read_run_meta

    base = rss_mb()
    start = time.perf_counter()
    items = 0
    next_report = every

    def report(done: bool) -> None:
        secs = time.perf_counter() - start
        line = {"items": items, "seconds": round(secs, 2), "rss_base_mb": round(base, 1)}
        line |= {"rss_peak_mb": round(rss_mb(), 1), "done": done}
        print(json.dumps(line), flush=True)

    if mode == "read":
        items = read_items(run_dir / "recording.msgpack")
    else:
        sink = NullSink()
        corr = Correlator(sink, read_run_meta(run_dir))
        for env in RecordingReader(run_dir / "recording.msgpack"):
            corr.feed(env)
            if sink.events >= next_report:
                items = sink.events
                next_report += every
                report(False)
        corr.finish()
        items = sink.events
    report(True)


NICE = ["nice", "-n", "19"]


def replay(
    run_dir: Path, mode: str, limit_s: float, every: int = PROGRESS_EVERY, nice: bool = False
) -> list[dict[str, Any]]:
    """Run a replay child; its JSON lines (the last has done=True unless it
    ran out of time and was stopped)."""
    proc = subprocess.Popen(
        [*(NICE if nice else []), PY, "-m", "bench.pipeline", "replay", str(run_dir), mode]
        + [str(every)],
        stdout=subprocess.PIPE,
        text=True,
    )
    lines: list[dict[str, Any]] = []
    timer = threading.Timer(limit_s, proc.kill)
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(json.loads(line))
    finally:
        timer.cancel()
        proc.wait()
    if not lines:
        raise BenchError(f"replay of {run_dir} printed nothing (exit {proc.returncode})")
    return lines


def generate(kind: str, n: int, raw: bool = True) -> Path:
    from bench.correlator_replay import gen_held, gen_stream, to_raw

    run_dir = OUT / "correlator" / f"{kind}-{n}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    (gen_held if kind == "held" else gen_stream)(run_dir, n)
    if raw:
        to_raw(run_dir)
    return run_dir


def correlator_throughput(events: int, rounds: int) -> Row:
    """Correlating a recording vs only reading it (decode), same file."""
    run_dir = generate("stream", events)
    corr: list[float] = []
    read: list[float] = []
    growth = 0.0
    try:
        for r in range(rounds):
            for mode in ("correlate", "read") if r % 2 == 0 else ("read", "correlate"):
                last = replay(run_dir, mode, 300)[-1]
                rate = last["items"] / max(last["seconds"], 1e-9)
                (corr if mode == "correlate" else read).append(rate)
                if mode == "correlate":
                    growth = last["rss_peak_mb"] - last["rss_base_mb"]
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return Row(
        "correlator_replay",
        "Pipeline capacity",
        f"correlator replaying a {events:,}-event synthetic recording (kernel batches as raw "
        "ring records) vs reading it only",
        median(corr),
        "events/s",
        median(read),
        "read + decode only",
        note=f"RSS growth {growth:.0f} MB",
        runs={"correlate": corr, "read": read},
    )


class BigReplay:
    """The 10M-event recording: generated and replayed in the background
    (it takes minutes), stopped at a deadline if it has not finished. It runs
    at nice 19, so that it takes only CPU the ratio measurements leave idle:
    its figure is memory, which a slower replay does not change. Its tcp_state
    batches stay dicts: converting 10M events to raw records doubles the
    writing time (~15 s CPU per 10M more), past the bench's time budget, and
    memory does not depend on the shape (docs/report.md has the raw 10M run)."""

    def __init__(self, events: int, deadline: float) -> None:
        self.events = events
        self.every = max(1, min(PROGRESS_EVERY, events // 10))
        self.deadline = deadline
        self.lines: list[dict[str, Any]] = []
        self.error = ""
        self.gen_s = 0.0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        run_dir = OUT / "correlator" / f"stream-{self.events}"
        try:
            t = time.monotonic()
            subprocess.run(
                [*NICE, PY, "-m", "bench.pipeline", "generate", "stream", str(self.events), "dict"],
                check=True,
                timeout=max(1.0, self.deadline - time.monotonic()),
            )
            self.gen_s = time.monotonic() - t
            log(f"10M: recording written in {self.gen_s:.0f} s; replaying")
            left = max(1.0, self.deadline - time.monotonic())
            self.lines = replay(run_dir, "correlate", left, self.every, nice=True)
        except Exception as e:  # reported in the row, never lost
            self.error = f"{type(e).__name__}: {e}"
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)

    def row(self) -> Row:
        self.thread.join(timeout=max(0.0, self.deadline - time.monotonic()) + 30)
        measure = f"correlator peak RSS replaying a {self.events:,}-event recording"
        lines = self.lines
        if not lines:
            return Row(
                "correlator_peak_rss",
                "Pipeline capacity",
                measure,
                None,
                "MB",
                goal="<= 1.10",
                note=f"not measured: {self.error or 'no progress reported'}",
            )
        last = lines[-1]
        first = next((x for x in lines if x["items"] >= self.every), lines[0])
        base = last["rss_base_mb"]
        done = last["done"]
        note = (
            f"peak {last['rss_peak_mb']:.0f} MB (base after imports {base:.0f} MB); "
            f"{last['items']:,} events in {last['seconds']:.0f} s "
            f"({last['items'] / max(last['seconds'], 1e-9):,.0f}/s); recording written in "
            f"{self.gen_s:.0f} s"
        )
        if not done:
            note = f"NOT FINISHED in the time budget, stopped at {last['items']:,} events; " + note
        return Row(
            "correlator_peak_rss",
            "Pipeline capacity",
            measure + f" (RSS growth at the end vs after the first {self.every:,} events)",
            last["rss_peak_mb"] - base,
            "MB growth",
            first["rss_peak_mb"] - base,
            f"growth at {self.every:,}",
            goal="<= 1.10",
            note=note,
            incomplete=not done,
        )


def correlator_scaling(sizes: list[int]) -> list[Row]:
    """Held connections (all open at once): the correlator's cost per size."""
    rows: list[Row] = []
    first: float | None = None
    for i, n in enumerate(sizes):
        run_dir = generate("held", n)
        try:
            last = replay(run_dir, "correlate", 300)[-1]
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
        rate = last["items"] / max(last["seconds"], 1e-9)
        growth = last["rss_peak_mb"] - last["rss_base_mb"]
        first = first or rate
        rows.append(
            Row(
                f"correlator_scale_{i + 1}",
                "Scaling",
                f"correlator, {n:,} connections held open at once: replay events/s",
                rate,
                "events/s",
                first,
                f"{sizes[0]:,} connections",
                note=(
                    f"{last['items']:,} events; RSS growth {growth:.0f} MB = "
                    f"{growth * 1024 / n:.2f} KB per held connection"
                ),
            )
        )
    return rows


def main(argv: list[str]) -> None:
    cmd = argv[0]
    if cmd == "send-bus":
        send_bus(argv[1], argv[2], int(argv[3]), argv[4])
    elif cmd == "send-raw":
        send_raw(argv[1], int(argv[2]), argv[3])
    elif cmd == "replay":
        replay_child(Path(argv[1]), argv[2], int(argv[3]))
    elif cmd == "generate":
        generate(argv[1], int(argv[2]), raw=argv[3:4] != ["dict"])
    else:
        raise SystemExit(f"bench.pipeline: unknown command {cmd!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
