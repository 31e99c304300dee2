"""The correlator on synthetic recordings: joins, lifecycles, outcomes, coverage."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from synthetic import Actor, Lab, RecordingWriter

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
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.conns: list[dict[str, Any]] = []

    def rows(self, chunk: RowsChunk) -> None:
        self.events.extend(chunk.dicts())

    def connection(self, row: dict[str, Any]) -> None:
        self.conns.append(row)


class Run:
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


def test_echo_lifecycle_both_sides(tmp_path: Path) -> None:
    """Each echo connection yields a client lifecycle ending in TIME_WAIT and a
    server lifecycle closing cleanly, with the kernel's exact state paths."""
    run = replay(tmp_path, echo(3))
    assert {"time_wait": 3, "clean": 3} == run.outcomes()
    client = [c for c in run.conns if c["role"] == "active"]
    server = [c for c in run.conns if c["role"] == "passive"]
    assert 3 == len(client) == len(server)
    # The last FIN_WAIT2 is the timewait socket's, waiting for the server's FIN.
    assert [
        ("SYN_SENT", False),
        ("ESTABLISHED", False),
        ("FIN_WAIT1", False),
        ("FIN_WAIT2", False),
        ("FIN_WAIT2", True),
    ] == [(s["state"], s.get("timewait", False)) for s in client[0]["states"]]
    assert ["SYN_RECV", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK"] == [
        s["state"] for s in server[0]["states"]
    ]
    assert {"actor": "client", "pid": 200, "fd": 4, "via": "app:connect"} == client[0]["owner"]
    assert {"actor": "server", "pid": 100, "fd": 4, "via": "accept4"} == server[0]["owner"]
    assert {"connect": 1, "close": 1} == client[0]["app"]
    # Lab: connect logged 25us after the SYN, close 5us after FIN_WAIT1 (+500us).
    t = T0 + MS
    assert [[t + 25_000, "connect"], [t + 505_000, "close"]] == client[0]["actions"]
    assert {"accept": 1, "peer_close": 1, "close": 1} == server[0]["app"]
    assert 1 == len([c for c in run.sink.conns if c["kind"] == "listener"])


def test_state_durations_follow_the_timestamps(tmp_path: Path) -> None:
    """A state's duration is the time until the socket's next transition."""
    run = replay(tmp_path, echo(1))
    client = next(c for c in run.conns if c["role"] == "active")
    # Lab.connect / client_close: SYN_SENT at +0, ESTABLISHED at +20us,
    # FIN_WAIT1 at +500us, FIN_WAIT2 at +520us, CLOSE at +522us (a timewait
    # socket takes over, in FIN_WAIT2 until the server closes at +560us).
    assert [20_000, 480_000, 20_000, 2_000, 38_000] == [s["dur_ns"] for s in client["states"]]
    assert 522_000 == client["duration_ns"]


def test_softirq_transitions_are_attributed_to_the_owner(tmp_path: Path) -> None:
    """Transitions run by a softirq (cpu_pid 0) keep cpu_pid as reported and get
    the owning actor joined; cpu_is_owner says which of the two is real."""
    run = replay(tmp_path, echo(2))
    state_rows = [r for r in run.sink.events if r["type"] == "tcp_state"]
    softirq = [r for r in state_rows if r["cpu_pid"] == 0]
    assert softirq, "the synthetic lab runs peer-side transitions in softirq context"
    for r in softirq:
        assert r["owner"] is not None
        assert r["owner"]["pid"] in (100, 200)
        assert r["cpu_is_owner"] is False
    own = [r for r in state_rows if r["cpu_pid"] == (r["owner"] or {}).get("pid")]
    assert all(r["cpu_is_owner"] for r in own)
    # The server child's first event (LISTEN->SYN_RECV) runs in softirq context
    # but is owned by the server, learned from accept4 later.
    first = next(r for r in state_rows if r["old"] == "LISTEN")
    assert (0, 100) == (first["cpu_pid"], first["owner"]["pid"])


def test_reused_four_tuple_is_a_new_incarnation(tmp_path: Path) -> None:
    """The same client port used twice gives two connections, and each app
    record joins the incarnation that was live at its time."""
    run = replay(tmp_path, echo(2, cport=lambda i: 45000))
    client = [c for c in run.conns if c["role"] == "active"]
    assert 2 == len(client)
    assert client[0]["id"] != client[1]["id"]
    assert [45000, 45000] == [c["lport"] for c in client]
    connects = [r for r in run.sink.events if r["type"] == "connect"]
    assert [c["id"] for c in client] == [r["conn"] for r in connects]
    assert {"time_wait": 2, "clean": 2} == run.outcomes()


def test_skaddr_reuse_after_close_starts_a_new_connection(tmp_path: Path) -> None:
    """Socket memory is reused after CLOSE; each reuse is a separate lifecycle."""
    run = replay(tmp_path, echo(5))
    skaddrs = [c["skaddr"] for c in run.conns]
    assert len(set(skaddrs)) < len(skaddrs), "the synthetic slab reuses skaddrs"
    assert 10 == len(run.conns)
    assert 10 == len({c["id"] for c in run.conns})


def test_sport_zero_syn_sent_gets_the_port_learned_later(tmp_path: Path) -> None:
    """CLOSE->SYN_SENT carries sport 0; the port comes from a later transition
    and the first state still belongs to the same lifecycle."""
    run = replay(tmp_path, echo(1))
    first = next(r for r in run.sink.events if r["type"] == "tcp_state" and r["new"] == "SYN_SENT")
    assert 0 == first["sport"]
    client = next(c for c in run.conns if c["role"] == "active")
    assert first["conn"] == client["id"]
    assert 40000 == client["lport"]
    assert "SYN_SENT" == client["states"][0]["state"]


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


def test_eaddrnotavail_connects_fail_without_a_port(tmp_path: Path) -> None:
    """connect() failing with EADDRNOTAVAIL shows CLOSE->SYN_SENT->CLOSE with
    sport 0; each is a failed_connect joined to the bomber's log record."""

    def script(lab: Lab) -> None:
        for i in range(7):
            lab.failed_connect(T0 + i * MS, BOMBER, ("127.0.0.1", 8080))

    run = replay(tmp_path, script)
    assert {"failed_connect": 7} == run.outcomes()
    assert {"EADDRNOTAVAIL": 7} == run.summary["counts"]["errors"]
    for c in run.conns:
        assert (None, ["127.0.0.1", 8080]) == (c["lport"], c["dest"])
        assert ("bomber", "EADDRNOTAVAIL") == (c["owner"]["actor"], c["error"])
    cov = run.summary["coverage"]
    assert {"records": 7, "matched": 7, "pct": 100.0} == cov["app_connect_failed"]
    assert any("failed 7 times with EADDRNOTAVAIL" in d for d in run.summary["diagnosis"])


def test_port_exhaustion_diagnosis_uses_the_observer_peak(tmp_path: Path) -> None:
    """TIME_WAIT's peak comes from observer samples (the tracepoint never
    reports TIME_WAIT) and is told together with the EADDRNOTAVAIL count."""

    def script(lab: Lab) -> None:
        for i, tw in enumerate((10, 500, 28000, 27000)):
            lab.observer(T0 + i * 100 * MS, {"TIME_WAIT": tw, "ESTABLISHED": 1})
        for i in range(3):
            lab.failed_connect(T0 + 400 * MS + i * MS, BOMBER, ("127.0.0.1", 8080))

    run = replay(tmp_path, script)
    assert 28000 == run.summary["counts"]["states_peak"]["TIME_WAIT"]
    assert (
        "TIME_WAIT climbed to 28000 and connect() failed 3 times with EADDRNOTAVAIL "
        "(ephemeral ports exhausted): the kernel saw 3 connects end without a port and "
        "the actors logged 3." in run.summary["diagnosis"]
    )


def test_close_wait_leak_is_owned_by_the_leaker(tmp_path: Path) -> None:
    """Accepted sockets never closed stay in CLOSE_WAIT owned by the leaker,
    their peers in FIN_WAIT2, and the diagnosis says so in those words."""

    def script(lab: Lab) -> None:
        lab.listen(T0, LEAKER, 9090)
        for i in range(4):
            p = lab.connect(T0 + (i + 1) * MS, CLIENT, LEAKER, 41000 + i, 9090)
            lab.client_close(T0 + (i + 1) * MS + MS // 2, p, server_closes=False)

    run = replay(tmp_path, script)
    assert {"stuck_close_wait": 4, "stuck_fin_wait2": 4} == run.outcomes()
    stuck = [c for c in run.conns if c["outcome"] == "stuck_close_wait"]
    assert {("leaker", 300)} == {(c["owner"]["actor"], c["owner"]["pid"]) for c in stuck}
    assert all(not c["closed_in_run"] for c in stuck)
    assert (
        "4 sockets stuck in CLOSE_WAIT, owned by leaker pid 300: accepted and never closed; "
        "their peers wait in FIN_WAIT_2 (4 of them)." == run.summary["diagnosis"][0]
    )


def test_accept_emfile_is_counted_and_explained(tmp_path: Path) -> None:
    """accept4 failing with EMFILE is counted per process and diagnosed."""

    def script(lab: Lab) -> None:
        for i in range(5):
            lab.accept_failed(T0 + i * MS, LEAKER, 24, "EMFILE")
        lab.accept_failed(T0 + 6 * MS, LEAKER, 11, "EAGAIN")

    run = replay(tmp_path, script)
    assert {"EMFILE": 5, "EAGAIN": 1} == run.summary["counts"]["accept"]
    assert (
        "accept4 failed 5 times with EMFILE in leaker pid 300: the process hit its "
        "open-file limit." in run.summary["diagnosis"]
    )


def test_refused_and_reset_outcomes(tmp_path: Path) -> None:
    """A SYN answered by RST is refused; an abortive close is a reset."""

    def script(lab: Lab) -> None:
        lab.listen(T0, SERVER, 8080)
        lab.refused(T0 + MS, CLIENT, ("127.0.0.1", 9999), 42000)
        p = lab.connect(T0 + 2 * MS, CLIENT, SERVER, 42001, 8080)
        lab.reset(T0 + 3 * MS, p)

    run = replay(tmp_path, script)
    assert {"refused": 1, "reset": 2} == run.outcomes()
    refused = next(c for c in run.conns if c["outcome"] == "refused")
    assert "ECONNREFUSED" == refused["error"]


def test_unaccepted_connection_is_never_accepted(tmp_path: Path) -> None:
    """A handshake the application never accepts is 'never_accepted', even
    when the peer closed it meanwhile."""

    def script(lab: Lab) -> None:
        lab.listen(T0, SERVER, 8080)
        p = lab.connect(T0 + MS, CLIENT, SERVER, 43000, 8080)
        lab.client_close(T0 + 2 * MS, p)
        q = lab.connect(T0 + 3 * MS, CLIENT, SERVER, 43001, 8080, accept=False)
        lab.client_close(T0 + 4 * MS, q, server_closes=False)

    run = replay(tmp_path, script)
    assert {"time_wait": 1, "clean": 1, "never_accepted": 1, "stuck_fin_wait2": 1} == (
        run.outcomes()
    )


def test_coverage_is_exact_on_a_partly_observed_run(tmp_path: Path) -> None:
    """Coverage counts exactly which app connections found their kernel side
    and which kernel events found an owner."""

    def script(lab: Lab) -> None:
        lab.listen(T0, SERVER, 8080)
        # Two fully observed connections.
        for i in range(2):
            p = lab.connect(T0 + (i + 1) * MS, CLIENT, SERVER, 44000 + i, 8080)
            lab.client_close(T0 + (i + 1) * MS + MS // 2, p)
        # One app connect the probe never saw.
        lab.log(
            CLIENT,
            T0 + 5 * MS,
            "connect",
            fd=9,
            laddr="127.0.0.1",
            lport=44500,
            raddr="127.0.0.1",
            rport=8080,
        )
        # Kernel events of a socket nobody in the lab logged or accepted,
        # all in softirq context: 2 events without an owner.
        lab.state(
            T0 + 6 * MS, 0xDEAD, "ESTABLISHED", "FIN_WAIT1", ("10.0.0.1", 5555), ("10.0.0.2", 80), 0
        )
        lab.state(
            T0 + 7 * MS, 0xDEAD, "FIN_WAIT1", "CLOSE", ("10.0.0.1", 5555), ("10.0.0.2", 80), 0
        )

    meta = {"actors": {"server": {"pid": 100}, "client": {"pid": 200}}, "started_mono_ns": T0}
    run = replay(tmp_path, script, meta=meta)
    cov = run.summary["coverage"]
    # 2 connects + 2 accepts matched, 1 connect unmatched.
    assert (5, 4, 80.0) == (
        cov["app_connections"],
        cov["app_connections_matched"],
        cov["app_connections_pct"],
    )
    # Owned: 1 listen + 2 * 10 state events + 2 accept events; 2 orphan events.
    assert (25, 23) == (cov["kernel_events"], cov["kernel_events_owned"])
    assert 92.0 == cov["kernel_events_pct"]
    assert (4, 4) == (cov["kernel_connections"] - 1, cov["kernel_connections_owned"])


def test_epoll_wakeups_are_summarised_per_process(tmp_path: Path) -> None:
    """epoll_wait exits become a per-process histogram of ready counts, with
    the median and the threads that waited; the sentence names the actor's
    own thread and only counts ZeroMQ's bus thread."""
    mux = Actor("multiplexer", 500)

    def script(lab: Lab) -> None:
        for i, ready in enumerate([1, 2, 2, 3, 9, 0]):
            comm = "ZMQbg/IO/0" if i % 2 else None
            lab.epoll_event(T0 + i * MS, mux, 501 + i % 2, ready, comm=comm)

    run = replay(tmp_path, script, meta={"actors": {"multiplexer": {"pid": 500}}})
    ep = run.summary["counts"]["epoll"]
    assert (6, 2, 2, 1, 9) == (
        ep["calls"],
        ep["median_ready"],
        ep["threads"],
        ep["timeouts"],
        ep["max_ready"],
    )
    # Thread 501 made calls 0, 2, 4 (ready 1, 2, 9); ZeroMQ's 502 made 1, 3, 5.
    assert (
        "multiplexer pid 500 waited in epoll in one thread, multiplexer (tid 501): "
        "3 epoll_wait calls, up to 9 ready per wake-up, 0 returned empty "
        "(ZeroMQ's 1 bus thread made 3 more calls)." in run.summary["diagnosis"]
    )
    by_actor = run.summary["counts"]["epoll_by_actor"]["multiplexer"]
    assert (6, 2, 1) == (by_actor["calls"], by_actor["threads"], by_actor["processes"])


def test_in_kernel_epoll_histogram_stands_in_for_switched_off_events(tmp_path: Path) -> None:
    """With per-call epoll events off, the probe's log2 histogram gives the
    call count and a bucketed median."""

    def script(lab: Lab) -> None:
        # slot 0: 4 empty returns; slot 1: 1 ready x 10; slot 3: 4..7 ready x 30
        lab.w.stats(
            "probes",
            {
                "source": "probes",
                "programs": {},
                "epoll_hist": [{"pid": 500, "ready_log2": [4, 10, 0, 30], "blocked_ns_log2": []}],
            },
            T0,
        )

    run = replay(tmp_path, script, meta={})
    ep = run.summary["counts"]["epoll"]
    assert (44, 4, 7) == (ep["calls"], ep["timeouts"], ep["median_ready"])


def test_probe_drops_and_observer_samples_reach_the_summary(tmp_path: Path) -> None:
    """Kernel-side drops (running totals) are reported as the latest total."""

    def script(lab: Lab) -> None:
        lab.probe_stats(T0, {"tcp_state": {"events": 10, "drops": 1}})
        lab.probe_stats(
            T0 + MS, {"tcp_state": {"events": 20, "drops": 3}, "accept": {"events": 5, "drops": 0}}
        )

    run = replay(tmp_path, script)
    assert {"tcp_state": 3, "accept": 0} == run.summary["losses"]["kernel_drops"]
    assert 3 == run.summary["counts"]["lost"]["kernel_drops"]
    assert any(
        d.startswith("Losses: the kernel dropped 3 events") for d in run.summary["diagnosis"]
    )


def test_phases_get_their_own_counts_and_expectations(tmp_path: Path) -> None:
    """Counts are also kept per phase, so an expectation can name a phase."""

    def script(lab: Lab) -> None:
        lab.listen(T0, SERVER, 8080)
        for i in range(3):
            lab.failed_connect(T0 + (i + 1) * MS, BOMBER, ("127.0.0.1", 8080))
        for i in range(2):
            p = lab.connect(T0 + (10 + i) * MS, BOMBER, SERVER, 46000 + i, 8080)
            lab.client_close(T0 + (10 + i) * MS + MS // 2, p)

    meta = {
        "actors": ACTORS,
        "started_mono_ns": T0,
        "phases": [
            {"name": "bomb", "start_mono_ns": T0, "end_mono_ns": T0 + 9 * MS},
            {"name": "pooled", "start_mono_ns": T0 + 9 * MS, "end_mono_ns": T0 + 99 * MS},
        ],
        "expected": {
            "phases": {
                "bomb": {"errors": {"EADDRNOTAVAIL": ">0"}},
                "pooled": {"errors": {"EADDRNOTAVAIL": "==0"}, "outcomes": {"time_wait": 2}},
            }
        },
    }
    run = replay(tmp_path, script, meta=meta)
    phases = run.summary["counts"]["phases"]
    assert {"EADDRNOTAVAIL": 3} == phases["bomb"]["errors"]
    assert {"time_wait": 2, "clean": 2} == phases["pooled"]["outcomes"]
    assert [True, True, True] == [e["held"] for e in run.summary["expectations"]]
    assert run.summary["expectations_held"] is True


def test_actor_progress_reports_become_counts(tmp_path: Path) -> None:
    """Each actor's last STATS body is a count tree (numbers only, nesting kept,
    booleans as 0/1), overall and as it stood when each phase ended."""

    def script(lab: Lab) -> None:
        lab.observer(T0, {"TIME_WAIT": 0})
        for i, (t, attempts) in enumerate(((5, 900), (9, 1500), (50, 2100))):
            body = {
                "source": "bomber",
                "attempts": attempts,
                "failed": {"EADDRNOTAVAIL": 10 * i},
                "per_s": 12.5,
                "done": i == 2,
                "mode": "bomb",
                "ports": [1, 2],
            }
            lab.w.stats("actor:bomber", body, T0 + t * MS)
        lab.w.stats("actor:server", {"source": "server", "open": 3, "accepted": 7}, T0 + 20 * MS)

    meta = {
        "actors": ACTORS,
        "started_mono_ns": T0,
        "phases": [
            {"name": "bomb", "start_mono_ns": T0, "end_mono_ns": T0 + 10 * MS},
            {"name": "pooled", "start_mono_ns": T0 + 10 * MS, "end_mono_ns": T0 + 99 * MS},
        ],
        "expected": {
            "progress": {"bomber": {"attempts": ">2000", "failed": {"EADDRNOTAVAIL": 20}}},
            "phases": {"bomb": {"progress": {"bomber": {"attempts": "<2000"}}}},
        },
    }
    run = replay(tmp_path, script, meta=meta)
    counts = run.summary["counts"]
    assert {
        "bomber": {
            "attempts": 2100,
            "failed": {"EADDRNOTAVAIL": 20},
            "per_s": 12.5,
            "done": 1,
        },
        "server": {"open": 3, "accepted": 7},
    } == counts["progress"]
    assert {
        "bomber": {"attempts": 1500, "failed": {"EADDRNOTAVAIL": 10}, "per_s": 12.5, "done": 0}
    } == counts["phases"]["bomb"]["progress"]
    assert counts["progress"] == counts["phases"]["pooled"]["progress"]
    assert [True, True, True] == [e["held"] for e in run.summary["expectations"]]


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
    assert not j.by_tuple and not j.by_pidfd and not j.failed
    # Only the listener is still open when the recording ends.
    assert 1 == len(run.corr.lives.open_by_sk) and not run.corr.rows.conns


@pytest.mark.parametrize("window_ns", [0, 2_000_000_000])
def test_results_do_not_depend_on_the_window(tmp_path: Path, window_ns: int) -> None:
    """In-order input gives the same lifecycles whatever the reorder window."""
    cfg = CorrelatorConfig(window_ns=window_ns)
    run = replay(tmp_path, echo(5), batch=1, app_batch=1, config=cfg)
    assert {"time_wait": 5, "clean": 5} == run.outcomes()
    assert 0 == run.result.late_events


def test_syscall_events_of_processes_outside_the_lab_are_left_out(tmp_path: Path) -> None:
    """accept4/epoll_wait events from a pid that is no actor's (e.g. the
    orchestrator's own sockets) are counted apart, not as unowned lab events."""
    outsider = Actor("orchestrator", 999)

    def script(lab: Lab) -> None:
        lab.accept_event(T0, outsider, 17)
        lab.epoll_event(T0 + MS, outsider, 999, 1)
        lab.epoll_event(T0 + 2 * MS, SERVER, 100, 1)

    run = replay(tmp_path, script)
    cov = run.summary["coverage"]
    assert (1, 1, 2) == (
        cov["kernel_events"],
        cov["kernel_events_owned"],
        cov["kernel_events_outside_lab"],
    )
    assert {} == run.summary["counts"]["accept"]
    assert 1 == run.summary["counts"]["epoll"]["calls"]


def test_orphaned_closer_waits_for_its_peer_to_decide(tmp_path: Path) -> None:
    """An orphaned client leaves FIN_WAIT2 for a timewait socket while the
    server is still in CLOSE_WAIT; when the server closes seconds later the
    client's outcome is time_wait, found out by parking it until then."""

    def script(lab: Lab) -> None:
        lab.listen(T0, SERVER, 8080)
        p = lab.connect(T0 + MS, CLIENT, SERVER, 47000, 8080)
        lab.client_close(T0 + 2 * MS, p, server_delay_ns=3_000 * MS)
        lab.log(SERVER, T0 + 4_000 * MS, "progress")

    run = replay(tmp_path, script)
    assert {"time_wait": 1, "clean": 1} == run.outcomes()
    client = next(c for c in run.conns if c["role"] == "active")
    assert "FIN_WAIT2" == client["timewait_from"]
    assert 1 == run.result.n["parked_closers"]


def test_sockets_closed_only_by_teardown_count_as_stuck(tmp_path: Path) -> None:
    """A socket still in CLOSE_WAIT when the last phase ended is stuck, even
    if stopping the leaker closed it afterwards; its peer is stuck in FIN_WAIT2."""

    def script(lab: Lab) -> None:
        lab.listen(T0, LEAKER, 9090)
        for i in range(3):
            p = lab.connect(T0 + (i + 1) * MS, CLIENT, LEAKER, 48000 + i, 9090)
            # The leaker is killed at +1s, after the phases ended at +500ms.
            lab.client_close(T0 + (i + 1) * MS + MS // 2, p, server_delay_ns=1_000 * MS)

    meta = {
        "actors": ACTORS,
        "started_mono_ns": T0,
        "phases": [{"name": "hold", "start_mono_ns": T0, "end_mono_ns": T0 + 500 * MS}],
    }
    run = replay(tmp_path, script, meta=meta)
    assert {"stuck_close_wait": 3, "stuck_fin_wait2": 3} == run.outcomes()
    assert run.summary["diagnosis"][0].endswith("their peers wait in FIN_WAIT_2 (3 of them).")


def test_unaccepted_child_belongs_to_the_listeners_owner(tmp_path: Path) -> None:
    """A child never accepted sits in the listener's queue: its events are
    owned by the listener's process, marked as learned via the listener."""

    def script(lab: Lab) -> None:
        lab.listen(T0, LEAKER, 9090)
        lab.connect(T0 + MS, CLIENT, LEAKER, 49000, 9090, accept=False)

    run = replay(tmp_path, script)
    child = next(c for c in run.conns if c["role"] == "passive")
    assert {"actor": "leaker", "pid": 300, "fd": None, "via": "listener"} == child["owner"]


def test_reused_skaddr_without_close_is_an_unknown_outcome(tmp_path: Path) -> None:
    """If a socket's closing transitions never arrive and its memory is
    reused, the old incarnation ends with outcome 'unknown' and is counted."""

    def script(lab: Lab) -> None:
        lab.listen(T0, SERVER, 8080)
        sk = 0xBEEF
        c, s = ("127.0.0.1", 49500), ("127.0.0.1", 8080)
        lab.state(T0 + MS, sk, "CLOSE", "SYN_SENT", ("127.0.0.1", 0), s, 200)
        lab.state(T0 + 2 * MS, sk, "SYN_SENT", "ESTABLISHED", c, s, 200)
        lab.state(T0 + 3 * MS, sk, "ESTABLISHED", "FIN_WAIT1", c, s, 200)
        # ... FIN_WAIT1 -> FIN_WAIT2 -> CLOSE lost; the memory is a child now:
        lab.state(T0 + 4 * MS, sk, "LISTEN", "SYN_RECV", s, ("127.0.0.1", 49501), 200)

    run = replay(tmp_path, script)
    assert {"unknown": 1, "open_at_end": 1} == run.outcomes()
    assert 1 == run.summary["losses"]["kernel_close_not_seen"]
    assert 2 == len({c["id"] for c in run.conns})


def test_failures_seen_by_the_kernel_but_logged_only_sometimes(tmp_path: Path) -> None:
    """An actor that logs only some connect failures: the kernel's count of
    connects that ended without a port is the figure told, each record
    still joins its own failure."""

    def script(lab: Lab) -> None:
        for i in range(10):
            t = T0 + i * MS
            sk = lab.skaddr(t)
            dest = ("127.0.0.1", 8080)
            lab.state(t, sk, "CLOSE", "SYN_SENT", ("127.0.0.1", 0), dest, BOMBER.pid)
            lab.state(t + 400_000, sk, "SYN_SENT", "CLOSE", ("127.0.0.1", 0), dest, BOMBER.pid)
            lab.free(sk, t + 400_000)
            if i % 5 == 0:  # a rate-limited log, without the destination
                lab.log(
                    BOMBER, t + 401_000, "connect_failed", fd=12, errno=99, error="EADDRNOTAVAIL"
                )

    run = replay(tmp_path, script)
    assert {"EADDRNOTAVAIL": 10} == run.summary["counts"]["kernel_errors"]
    assert {"records": 2, "matched": 2, "pct": 100.0} == (
        run.summary["coverage"]["app_connect_failed"]
    )
    assert (
        "connect() failed 10 times with EADDRNOTAVAIL (ephemeral ports exhausted): the kernel "
        "saw 10 connects end without a port and the actors logged 2." in run.summary["diagnosis"]
    )
    matched = [r["conn"] for r in run.sink.events if r["type"] == "connect_failed"]
    failed = [c["id"] for c in run.conns]
    assert [failed[0], failed[5]] == matched


def test_port_failures_are_told_with_the_actors_own_counter_not_its_log_samples(
    tmp_path: Path,
) -> None:
    """The bomber logs a sample of its failures but counts them all in its
    progress reports: the sentence gives the kernel's count and the counter,
    never the sampled log records as if they were the actor's count."""

    def script(lab: Lab) -> None:
        for i in range(10):
            lab.failed_connect(T0 + i * MS, BOMBER, ("127.0.0.1", 8080), log=i % 5 == 0)
        body = {"source": "bomber", "attempts": 10, "failed": {"EADDRNOTAVAIL": 10}}
        lab.w.stats("bomber", body, T0 + 20 * MS)

    run = replay(tmp_path, script)
    assert 2 == run.summary["counts"]["errors"]["EADDRNOTAVAIL"]  # the log's samples
    assert (
        "connect() failed 10 times with EADDRNOTAVAIL (ephemeral ports exhausted): the kernel "
        "saw 10 connects end without a port and bomber's own counter says 10."
        in run.summary["diagnosis"]
    )
    assert not any("logged" in d for d in run.summary["diagnosis"])


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
    chunk: afterwards it is on again, and a caller who had it off keeps it off."""
    import gc

    assert gc.isenabled()
    replay(tmp_path, echo(50), batch=20, app_batch=5, config=CorrelatorConfig(chunk_items=100))
    assert gc.isenabled()
    gc.disable()
    try:
        (tmp_path / "off").mkdir()
        replay(tmp_path / "off", echo(5), batch=20, app_batch=5)
        assert not gc.isenabled()
    finally:
        gc.enable()
