"""The accept and epoll probes against the real kernel: accept4 with its
fd, peer and errors, the pid filter, epoll_wait/epoll_pwait2 and their
in-kernel histograms. The workloads run in child processes (Worker).
"""

from __future__ import annotations

import errno
import socket
import time
from collections import Counter

import pytest
from lab_helpers import KERNEL
from probe_kernel_harness import DEADLINE_S, Collector, Event, Worker, accepts

from probes.loader import Filters

pytestmark = [pytest.mark.root, pytest.mark.bpf]


def test_blocking_accept_returns_fd_and_peer(collector: Collector, workers: list[Worker]) -> None:
    """A blocking accept4 reports the listening fd, the new fd and the client's address."""
    w = Worker("accept")
    workers.append(w)
    port, lfd = int(w.info[0]), int(w.info[1])
    collector.reset(Filters(pids={w.pid}))
    w.go()
    cli = socket.create_connection(("127.0.0.1", port))
    cport = cli.getsockname()[1]
    _, fd, peer_port = w.line().split()
    events = collector.wait(accepts(w.pid), "accept event")
    cli.close()
    (e,) = [e for e in events if e["type"] == "accept"]
    assert (e["syscall"], e["lfd"], e["fd"], e["errno"]) == ("accept4", lfd, int(fd), 0)
    assert (e["family"], e["peer_addr"], e["peer_port"]) == (2, "127.0.0.1", cport)
    assert e["peer_port"] == int(peer_port)
    assert e["dur_ns"] > 0 and e["tid"] == w.pid


def test_accept_of_an_ipv6_peer_reports_its_address(
    collector: Collector, workers: list[Worker]
) -> None:
    """An accept on an IPv6 listener reports family 10 and the peer as "::1"."""
    w = Worker("accept6")
    workers.append(w)
    port = int(w.info[0])
    collector.reset(Filters(pids={w.pid}))
    w.go()
    cli = socket.create_connection(("::1", port))
    cport = cli.getsockname()[1]
    _, fd, peer_port = w.line().split()
    events = collector.wait(accepts(w.pid), "accept event")
    cli.close()
    (e,) = [e for e in events if e["type"] == "accept"]
    assert (e["fd"], e["errno"]) == (int(fd), 0)
    assert (e["family"], e["peer_addr"], e["peer_port"]) == (socket.AF_INET6, "::1", cport)
    assert int(peer_port) == cport


def test_nonblocking_accept_on_empty_queue_is_eagain(
    collector: Collector, workers: list[Worker]
) -> None:
    """Non-blocking I/O as strace shows it: accept4 on an empty queue returns EAGAIN at once."""
    w = Worker("eagain")
    workers.append(w)
    collector.reset(Filters(pids={w.pid}))
    w.go()
    assert w.line() == "EAGAIN"
    events = collector.wait(accepts(w.pid), "accept event")
    (e,) = [e for e in events if e["type"] == "accept"]
    assert (e["fd"], e["errno"], e["family"], e["lfd"]) == (-1, errno.EAGAIN, 0, int(w.info[1]))


def test_accept_with_open_file_limit_exhausted_is_emfile(
    collector: Collector, workers: list[Worker]
) -> None:
    """A pending connection cannot be accepted by a process at RLIMIT_NOFILE: EMFILE."""
    w = Worker("emfile")
    workers.append(w)
    cli = socket.create_connection(("127.0.0.1", int(w.info[0])))  # queued in the backlog
    collector.reset(Filters(pids={w.pid}))
    w.go()
    assert w.line() == "EMFILE"
    events = collector.wait(accepts(w.pid), "accept event")
    cli.close()
    (e,) = [e for e in events if e["type"] == "accept"]
    assert (e["fd"], e["errno"]) == (-1, errno.EMFILE)


def test_pid_filter_keeps_other_processes_out(collector: Collector, workers: list[Worker]) -> None:
    """Only the filtered pid's accepts arrive, though both processes accept."""
    outside, inside = Worker("eagain"), Worker("eagain")
    workers += [outside, inside]
    collector.reset(Filters(pids={inside.pid}))
    outside.go()
    assert outside.line() == "EAGAIN"
    inside.go()
    assert inside.line() == "EAGAIN"
    events = collector.wait(accepts(inside.pid), "the inside pid's accept")
    assert {e["pid"] for e in events if e["type"] in ("accept", "epoll")} == {inside.pid}


def test_epoll_wait_reports_ready_counts_and_blocked_time(
    collector: Collector, workers: list[Worker]
) -> None:
    """epoll_wait on 5 sockets: a 200 ms timeout with 0 ready, then 3, then 5 ready."""
    n = 5
    w = Worker("epoll", str(n))
    workers.append(w)
    epfd = int(w.info[0])
    collector.reset(Filters(pids={w.pid}))
    w.go()
    assert w.line() == "done 0 3 5"

    def three_calls(evs: list[Event]) -> bool:
        return sum(e["type"] == "epoll" and e["pid"] == w.pid for e in evs) >= 3

    events = collector.wait(three_calls, "three epoll calls")
    calls = [e for e in events if e["type"] == "epoll" and e["epfd"] == epfd]
    assert [(e["ready"], e["timeout_ms"], e["errno"]) for e in calls] == [
        (0, 200, 0),
        (3, -1, 0),
        (n, -1, 0),
    ]
    assert [e["maxevents"] for e in calls][1:] == [16, 16]
    # The kernel never returns from a timed-out wait before its timeout.
    assert calls[0]["dur_ns"] >= 200_000_000
    assert all(e["syscall"] in ("epoll_wait", "epoll_pwait") for e in calls)

    (hist,) = [h for h in collector.probes.epoll_histograms() if h["pid"] == w.pid]
    # log2 slots: 0 -> slot 0, 3 -> slot 2 ([2, 4)), 5 -> slot 3 ([4, 8)).
    assert hist["ready_log2"] == [1, 0, 1, 1]
    # Slot i counts [2^(i-1), 2^i), which is int.bit_length(); each call's time
    # is in the slot of its own dur_ns, however long the scheduler kept it.
    slots = Counter(e["dur_ns"].bit_length() for e in calls)
    assert {i: n for i, n in enumerate(hist["blocked_ns_log2"]) if n} == dict(slots)
    # The timed-out call blocked at least 200 ms >= 2^27 ns: slot 28 or above.
    assert calls[0]["dur_ns"].bit_length() >= 28


def test_epoll_pwait2_is_seen_with_its_timespec_timeout(
    collector: Collector, workers: list[Worker]
) -> None:
    """epoll_pwait2 (5.11+) by syscall number: a 200 ms timespec timeout with
    nothing ready, then a NULL timeout (forever) returning the one ready socket;
    ENOSYS twice where the kernel is older."""
    w = Worker("pwait2")
    workers.append(w)
    epfd = int(w.info[0])
    collector.reset(Filters(pids={w.pid}))
    w.go()
    if KERNEL < (5, 11):
        # 5.10 (`make test-kernels`): no such syscall, so nothing to see.
        assert w.line() == "done -1 -1"
        return
    assert w.line() == "done 0 1"

    def two_calls(evs: list[Event]) -> bool:
        return sum(e["type"] == "epoll" and e["pid"] == w.pid for e in evs) >= 2

    events = collector.wait(two_calls, "two epoll_pwait2 calls")
    calls = [e for e in events if e["type"] == "epoll" and e["epfd"] == epfd]
    assert [(e["syscall"], e["ready"], e["timeout_ms"], e["errno"]) for e in calls] == [
        ("epoll_pwait2", 0, 200, 0),
        ("epoll_pwait2", 1, -1, 0),
    ]
    assert calls[0]["dur_ns"] >= 200_000_000


def test_epoll_aggregate_only_keeps_histograms_and_stops_per_call_events(
    collector: Collector, workers: list[Worker]
) -> None:
    """In aggregate-only mode calls are counted in the kernel but not streamed."""
    w = Worker("epoll", "4")
    workers.append(w)
    collector.reset(Filters(pids={w.pid}))
    collector.probes.set_epoll_aggregate_only(True)
    try:
        w.go()
        assert w.line() == "done 0 3 4"

        def counted() -> int:
            hists = [h for h in collector.probes.epoll_histograms() if h["pid"] == w.pid]
            return sum(hists[0]["ready_log2"]) if hists else 0

        deadline = time.monotonic() + DEADLINE_S
        while counted() < 3 and time.monotonic() < deadline:
            collector.probes.poll(0.05)
        assert counted() == 3
        collector.probes.drain_all()
        assert [e for e in collector.events if e["type"] == "epoll"] == []
    finally:
        collector.probes.set_epoll_aggregate_only(False)
