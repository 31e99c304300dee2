"""The correlator on synthetic recordings: the summary's coverage, counts
(epoll, losses, phases, the actors' progress) and expectations."""

from __future__ import annotations

from pathlib import Path

from correlator_harness import ACTORS, BOMBER, CLIENT, MS, SERVER, T0, replay
from synthetic import Actor, Lab


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
