"""correlator/barrier.py on its own: fd facts joined to stuck sockets."""

from __future__ import annotations

import json
from pathlib import Path

from correlator.barrier import Barrier, FdFacts, _ranges


def write_conns(run_dir: Path, conns: list[dict[str, object]]) -> None:
    (run_dir / "connections.jsonl").write_text("".join(json.dumps(c) + "\n" for c in conns))


def stuck(sk: int, pid: int, fd: int) -> dict[str, object]:
    return {
        "outcome": "stuck_close_wait",
        "skaddr": sk,
        "owner": {"actor": "server", "pid": pid, "fd": fd, "via": "accept4"},
    }


def test_each_stuck_socket_is_joined_by_skaddr_or_by_pid_and_fd(tmp_path: Path) -> None:
    """Facts found by skaddr, else by (pid, fd); a closed fd is not 'never closed'."""
    b = Barrier()
    b.events = 3
    b.by_sk[100] = FdFacts(eof_ts=5)
    b.by_fd[(7, 9)] = FdFacts(eof_ts=6)
    b.by_fd[(7, 10)] = FdFacts(eof_ts=6, closed_ts=8)
    write_conns(
        tmp_path,
        [
            stuck(100, 7, 8),
            stuck(0, 7, 9),
            stuck(0, 7, 10),
            {"outcome": "clean", "skaddr": 5, "owner": None},
        ],
    )
    counts, sentences = b.finish(tmp_path)
    assert counts["barrier"] == {
        "fdio_events": 3,
        "close_wait_eof_read": 3,
        "close_wait_never_closed": 2,
        "close_wait_eof_never_closed": 2,
        "by_actor": {},
    }
    assert sentences == [
        "The syscall barrier: 3 sockets stuck in CLOSE_WAIT, owned by server pid 7, fds 8–10: "
        "2 of them read EOF (the peer's FIN reached the application) and was never closed — "
        "the local application's bug."
    ]


def test_no_fdio_records_no_counts(tmp_path: Path) -> None:
    write_conns(tmp_path, [stuck(1, 2, 3)])
    assert Barrier().finish(tmp_path) == ({}, [])


def test_fd_ranges() -> None:
    assert _ranges([9, 7, 8, 12, 20, 21]) == "7–9, 12, 20–21"
    assert _ranges(list(range(0, 20, 2))) == "0, 2, 4, 6, …"


def test_reads_and_eagain_per_actor_from_each_fds_last_counters(tmp_path: Path) -> None:
    """The last event of each fd holds its totals; fds of processes that are
    not the run's are left out; a child program counts for its actor."""
    (tmp_path / "run.json").write_text(
        json.dumps(
            {"actors": {"relay": {"pid": 1}}, "programs": {"gomux": 2, "gomux (child 3)": 3}}
        )
    )
    write_conns(tmp_path, [])
    b = Barrier()
    b.events = 4
    b.io = {
        (2, 7, 10): (5, 4, 6, 0),
        (2, 8, 11): (3, 2, 3, 0),
        (3, 9, 12): (1, 1, 1, 0),
        (99, 7, 13): (100, 100, 100, 0),
        (1, 5, 14): (2, 0, 2, 0),
    }
    counts, sentences = b.finish(tmp_path)
    assert counts["barrier"]["by_actor"] == {
        "gomux": {"fds": 3, "reads": 9, "eagain_reads": 7, "writes": 10, "eagain_writes": 0},
        "relay": {"fds": 1, "reads": 2, "eagain_reads": 0, "writes": 2, "eagain_writes": 0},
    }
    assert sentences == [
        "The syscall barrier: gomux pid 2's 3 socket fds made 9 reads, 7 of them EAGAIN "
        "(nothing to read yet: non-blocking I/O, the reader went back to epoll_wait), and "
        "10 writes.",
        "The syscall barrier: relay pid 1's 1 socket fds made 2 reads, none of them EAGAIN (it "
        "read only what epoll_wait said was ready), and 2 writes.",
    ]
