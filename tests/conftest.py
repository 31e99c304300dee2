"""Shared test policy: tests that need root, eBPF or network namespaces.

Where a requirement is missing the test is skipped with the reason, except
under TCPLAB_REQUIRE_BPF=1 (CI): there a test that cannot run fails, so a
green CI run proves the kernel tests really ran.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from bus.endpoints import Endpoints, ipc_endpoints, make_run_dir
from bus.hub import Hub

if TYPE_CHECKING:
    from actor_harness import Lab
    from probe_internals_harness import Traced
    from probe_kernel_harness import Collector, Worker

REQUIRE = os.environ.get("TCPLAB_REQUIRE_BPF") == "1"
GUARDED = ("root", "bpf", "netns")


def _missing(marker: str) -> str | None:
    if os.geteuid() != 0:
        return "needs root (eBPF and network namespaces): run `sudo make test`"
    if marker == "bpf":
        try:
            import bcc  # noqa: F401
        except ImportError:
            return "bcc is not importable: run `sudo scripts/provision.sh`"
        if not Path("/sys/kernel/tracing/events/sock/inet_sock_set_state").exists():
            return "tracefs or sock:inet_sock_set_state missing: run `sudo scripts/provision.sh`"
    if marker == "netns" and shutil.which("ip") is None:
        return "iproute2's `ip` is missing: run `sudo scripts/provision.sh`"
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "needs(program): runs `program` (a skip without it, a failure under TCPLAB_REQUIRE_BPF=1)",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("needs"):
        program = mark.args[0]
        if shutil.which(program) is None:
            reason = f"{program} is not installed: run `sudo scripts/provision.sh`"
            if REQUIRE:
                pytest.fail(f"TCPLAB_REQUIRE_BPF=1 and this test cannot run: {reason}", False)
            pytest.skip(reason)
    for marker in GUARDED:
        if item.get_closest_marker(marker) is None:
            continue
        reason = _missing(marker)
        if reason is None:
            continue
        if REQUIRE:
            pytest.fail(f"TCPLAB_REQUIRE_BPF=1 and this test cannot run: {reason}", pytrace=False)
        pytest.skip(reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """Under TCPLAB_REQUIRE_BPF=1 a guarded test that skips itself fails."""
    outcome = yield
    report = outcome.get_result()
    if REQUIRE and report.skipped and any(item.get_closest_marker(m) for m in GUARDED):
        report.outcome = "failed"
        report.longrepr = f"TCPLAB_REQUIRE_BPF=1 and this test skipped: {report.longrepr}"


def pytest_report_header(config: pytest.Config) -> str:
    mode = "required (skips fail)" if REQUIRE else "optional (skipped when missing)"
    return f"tcplab: root/bpf/netns tests {mode}; euid={os.geteuid()}"


@pytest.fixture
def endpoints(tmp_path: Path) -> Endpoints:
    """A private bus directory (mode 0700) for one test."""
    return ipc_endpoints(make_run_dir(str(tmp_path)))


@pytest.fixture
def hub(endpoints: Endpoints) -> Iterator[Hub]:
    """The orchestrator's end of the bus; its sockets close with linger 0."""
    h = Hub(endpoints.events, endpoints.control, heartbeat_s=0.1)
    yield h
    h.close()


@pytest.fixture
def lab(endpoints: Endpoints) -> Iterator[Lab]:
    """A Hub and the actor processes a test spawns on it (tests/actor_harness.py);
    every process is stopped and the hub closed after the test."""
    from actor_harness import Lab

    lab = Lab(Hub(endpoints.events, endpoints.control), endpoints)
    yield lab
    lab.close()


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    """Every default probe attached once per test module (compiling takes
    seconds) and drained into a Collector (tests/probe_kernel_harness.py)."""
    from probe_kernel_harness import Collector

    from probes.loader import ProbeSet
    from probes.plan import DEFAULT_PROBES, make_plan

    plan = make_plan()
    # The probes these tests are about (fdio keeps reporting the fds it tracked
    # before a filter was set, as tcp_state keeps its tracked sockets).
    probes = ProbeSet(plan, DEFAULT_PROBES)
    c = Collector(probes)
    probes.start(c.add)
    yield c
    probes.close()


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    """Worker processes a test starts (tests/probe_kernel_harness.py), killed after it."""
    made: list[Worker] = []
    yield made
    for w in made:
        w.close()


@pytest.fixture(scope="module")
def attached() -> Iterator[Traced]:
    """The TCP internals probes attached once per test module
    (tests/probe_internals_harness.py), filtered per test by `traced`."""
    from probe_internals_harness import Traced

    t = Traced()
    yield t
    t.probes.close()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A loopback listener on a free port, closed after the test."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    yield srv
    srv.close()


@pytest.fixture
def traced(attached: Traced, listener: socket.socket) -> Traced:
    """`attached`, following only the events of `listener`'s port."""
    attached.follow(listener.getsockname()[1])
    return attached
