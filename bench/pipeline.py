"""Pipeline capacity: the bus into the hub (the correlator's rows are
bench/correlator_rows.py).

    python -m bench.pipeline send-bus ENDPOINT CONTROL BATCHES LAYOUT   (child: EventSender)
    python -m bench.pipeline send-raw ENDPOINT BATCHES LAYOUT   (child: raw PUSH)

The senders run in their own process, as the probe process does; the
hub runs here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import msgpack
import numpy as np
import zmq

from bench.common import PY, BenchError
from bench.pairs import Row, median
from bus.endpoints import ipc_endpoints, make_run_dir
from bus.hub import Hub
from bus.rawbatch import Layout, count, dtype_of, make_body
from bus.schema import Kind

BATCH = 1000  # probes/process.py BATCH_MAX: the probe process's batch size (records)


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


def main(argv: list[str]) -> None:
    cmd = argv[0]
    if cmd == "send-bus":
        send_bus(argv[1], argv[2], int(argv[3]), argv[4])
    elif cmd == "send-raw":
        send_raw(argv[1], int(argv[2]), argv[3])
    else:
        raise SystemExit(f"bench.pipeline: unknown command {cmd!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
