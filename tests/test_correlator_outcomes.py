"""The correlator on synthetic recordings: how connections end (outcomes,
errors) and the diagnosis sentences that tell it."""

from __future__ import annotations

from pathlib import Path

from correlator_harness import ACTORS, BOMBER, CLIENT, LEAKER, MS, SERVER, T0, replay
from synthetic import Lab


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


def test_close_wait_across_the_end_is_stuck_only_if_its_owner_kept_it(tmp_path: Path) -> None:
    """Three CLOSE_WAITs span the experiment's end (+500 ms). The server that
    had not read the FIN yet when the end came and closed the socket 36 ms
    later (its close record, no peer_close: a pooler's connection in a real
    bomb run) was behind, not keeping it: clean, its peer time_wait. The
    leaker that read the FIN and closed only when stopped, and the socket
    never closed at all, are stuck."""

    def script(lab: Lab) -> None:
        lab.listen(T0, SERVER, 8080)
        lab.listen(T0, LEAKER, 9090)
        p = lab.connect(T0 + MS, CLIENT, SERVER, 47000, 8080)
        lab.client_close(T0 + 499 * MS, p, server_delay_ns=37 * MS, server_reads_fin=False)
        q = lab.connect(T0 + 2 * MS, CLIENT, LEAKER, 48000, 9090)
        lab.client_close(T0 + 3 * MS, q, server_delay_ns=1_000 * MS)
        r = lab.connect(T0 + 4 * MS, CLIENT, LEAKER, 48001, 9090)
        lab.client_close(T0 + 5 * MS, r, server_closes=False)

    meta = {
        "actors": ACTORS,
        "started_mono_ns": T0,
        "phases": [{"name": "hold", "start_mono_ns": T0, "end_mono_ns": T0 + 500 * MS}],
    }
    run = replay(tmp_path, script, meta=meta)
    passive = {c["rport"]: c["outcome"] for c in run.conns if c["role"] == "passive"}
    assert {47000: "clean", 48000: "stuck_close_wait", 48001: "stuck_close_wait"} == passive
    active = {c["lport"]: c["outcome"] for c in run.conns if c["role"] == "active"}
    assert {47000: "time_wait", 48000: "stuck_fin_wait2", 48001: "stuck_fin_wait2"} == active
    assert run.summary["diagnosis"][0].startswith("2 sockets stuck in CLOSE_WAIT, owned by leaker")


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
