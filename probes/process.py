"""The probe process: `python -m probes --events EP --control EP [filters]`.

It loads and attaches the BPF programs, then streams what they see onto the
orchestrator's bus with the same runtime the actors use (hello -> ready ->
commands, heartbeats, eof): KERNEL_RAW batches (bus/rawbatch.py: the ring's
records as bytes, with their layout) of up to BATCH_MAX records per probe,
flushed at least every BATCH_AGE_S; nothing is decoded here, so the cost
per event is a share of a memcpy. A STATS message every second
with events, drops and ring occupancy per program and the epoll
histograms. READY goes out only once every program is attached; on stop,
SIGTERM or SIGINT it detaches everything, ships what is left, then EOF.

Command `set` (args: pids, lports, rports, ports: lists of ints; either,
epoll_aggregate_only: bools) changes the filters while running.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from actors.runtime import Runtime, UsageError, parser, run
from bus.rawbatch import Layout, make_body
from bus.schema import Kind
from probes.loader import Filters, ProbeSet
from probes.plan import DEFAULT_PROBES, INTERNALS, PROBES, ProbeError, make_plan

BATCH_MAX = 1000
BATCH_AGE_S = 0.05
STATS_INTERVAL_S = 1.0
# How long one wait for kernel events may last: bounds the reaction time to
# commands and signals, and keeps batches within their age limit.
POLL_S = 0.02
EXIT_PROBES = 4


def build_parser() -> Any:
    p = parser("probes", "Stream kernel TCP, accept and epoll events onto the tcplab bus.")
    p.prog = "python -m probes"
    p.add_argument("--pid", type=int, action="append", default=[], help="trace only this pid")
    p.add_argument(
        "--port",
        type=int,
        action="append",
        default=[],
        help="trace only TCP sockets with this local or remote port",
    )
    p.add_argument("--lport", type=int, action="append", default=[], help="local port filter")
    p.add_argument("--rport", type=int, action="append", default=[], help="remote port filter")
    p.add_argument(
        "--probe",
        action="append",
        choices=PROBES,
        help="load only this probe (repeatable; default: tcp_state, accept, epoll)",
    )
    p.add_argument(
        "--internals",
        action="store_true",
        help="also load the TCP internals probes (tcp_probe sampled, tcp_events)",
    )
    p.add_argument(
        "--either",
        action="store_true",
        help="tcp_state: a socket passes when its pid or its ports match (not both)",
    )
    p.add_argument(
        "--epoll-aggregate-only",
        action="store_true",
        help="epoll: in-kernel histograms only, no per-call events",
    )
    return p


def filters_from(args: dict[str, Any], current: Filters) -> Filters:
    """Filters from a `set` command's args; keys left out keep their value."""

    def ints(key: str, old: set[int]) -> set[int]:
        if key not in args:
            return old
        value = args[key]
        if not isinstance(value, list) or not all(type(v) is int for v in value):
            raise UsageError(f"set {key}: give a list of integers, got {value!r}")
        return set(value)

    try:
        return Filters(
            pids=ints("pids", current.pids),
            lports=ints("lports", current.lports),
            rports=ints("rports", current.rports),
            ports=ints("ports", current.ports),
            either=bool(args.get("either", current.either)),
        )
    except ProbeError as e:
        raise UsageError(str(e)) from None


def filters_dict(f: Filters) -> dict[str, Any]:
    return {
        "pids": sorted(f.pids),
        "lports": sorted(f.lports),
        "rports": sorted(f.rports),
        "ports": sorted(f.ports),
        "either": f.either,
    }


class Batcher:
    """Raw records per probe, shipped as KERNEL_RAW batches when full or old."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.layouts: dict[str, Layout] = {}  # per probe: set once it is compiled
        self.pending: dict[str, list[bytes]] = {}
        self.size: dict[str, int] = {}  # pending bytes per probe
        self.since: dict[str, float] = {}
        self.sent = 0

    def add(self, probe: str, records: bytes) -> None:
        # Called from inside the drain with each read's records: only queue
        # here; sending (which may raise) happens in the main loop.
        chunks = self.pending.get(probe)
        if chunks is None:
            chunks = self.pending[probe] = []
            self.size[probe] = 0
            self.since[probe] = time.monotonic()
        chunks.append(records)
        self.size[probe] += len(records)

    def ship(self, force: bool = False) -> None:
        now = time.monotonic()
        for probe in list(self.pending):
            layout = self.layouts[probe]
            full = BATCH_MAX * layout["itemsize"]
            if not force and self.size[probe] < full and now - self.since[probe] < BATCH_AGE_S:
                continue
            chunks = self.pending.pop(probe)
            del self.size[probe], self.since[probe]
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            for i in range(0, len(data), full):
                self._send(make_body(probe, layout, data[i : i + full]))

    def _send(self, body: dict[str, Any]) -> None:
        assert self.runtime.events is not None
        self.runtime.events.send(Kind.KERNEL_RAW, body)
        self.sent += len(body["records"]) // body["layout"]["itemsize"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(lambda: _run(args), "python -m probes")


def _run(args: Any) -> int:
    if args.events is None or args.control is None:
        raise UsageError(
            "python -m probes talks to the orchestrator: give --events and --control "
            "(to watch events in a terminal use `tcplab watch`)"
        )
    try:
        filters = Filters(
            set(args.pid), set(args.lport), set(args.rport), set(args.port), either=args.either
        )
        plan = make_plan()
    except ProbeError as e:
        raise UsageError(str(e)) from None
    runtime = Runtime("probes", args)
    batcher = Batcher(runtime)
    probes: ProbeSet | None = None
    try:
        try:
            wanted = DEFAULT_PROBES + (INTERNALS if args.internals else ())
            probes = ProbeSet(
                plan, args.probe or [n for n in plan.usable() if n in wanted], filters
            )
            batcher.layouts = {name: probes.layout(name) for name in probes.probes}
            probes.start(batcher.add)
        except ProbeError as e:
            print(f"python -m probes: error: {e}", file=sys.stderr)
            runtime.exit_code = EXIT_PROBES
            return runtime.close()
        probes.set_epoll_aggregate_only(args.epoll_aggregate_only)

        def on_set(cmd_args: dict[str, Any]) -> dict[str, Any]:
            assert probes is not None
            probes.set_filters(filters_from(cmd_args, probes.filters))
            if "epoll_aggregate_only" in cmd_args:
                probes.set_epoll_aggregate_only(bool(cmd_args["epoll_aggregate_only"]))
            return {"filters": filters_dict(probes.filters)}

        runtime.on_set = on_set
        # Probes run from the moment they are attached; `start` is accepted
        # but changes nothing.
        runtime.started = True
        runtime.ready(
            plan=plan.as_dict(),
            programs=list(probes.probes),
            filters=filters_dict(filters),
        )
        next_stats = time.monotonic() + STATS_INTERVAL_S
        while not runtime.stopping:
            probes.poll(POLL_S)
            batcher.ship()
            runtime.service(0)
            now = time.monotonic()
            if now >= next_stats:
                next_stats = now + STATS_INTERVAL_S
                runtime.report({"source": "probes", **probes.stats()})
        # Detach first, so nothing new arrives, then ship the rest.
        probes.drain_all()
        final = probes.stats()
        probes.close()
        batcher.ship(force=True)
        runtime.report({"source": "probes", "final": True, **final})
    finally:
        if probes is not None:
            probes.close()
    return runtime.close()
