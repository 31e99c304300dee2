"""probes/owners.py: who owns a socket, from kernel events as the probes print them.

Pure code, fed events in the shape bus/rawbatch.py decodes (the real-BPF
end to end is tests/test_watch_owners.py); each expected owner is stated
here, from the story the events tell.
"""

from __future__ import annotations

from typing import Any

import pytest

from probes import owners as owners_mod
from probes.owners import Owners

SRV, CLI, OTHER = 4242, 5151, 6363
SK_SRV, SK_CLI = 0xA000, 0xB000


Ev = dict[str, Any]


def tcp(ts: int, sk: int, old: str, new: str, sport: int, dport: int, cpu: int = 0) -> Ev:
    return {
        "type": "tcp_state", "ts": ts, "skaddr": sk, "cpu_pid": cpu, "cpu_comm": "x",
        "family": 2, "saddr": "127.0.0.1", "sport": sport, "daddr": "127.0.0.1",
        "dport": dport, "old": old, "new": new,
    }  # fmt: skip


def accept(ts: int, pid: int, fd: int, peer_port: int, lfd: int = 3) -> dict[str, Any]:
    return {
        "type": "accept", "ts": ts, "pid": pid, "tid": pid, "comm": "server", "syscall": "accept4",
        "lfd": lfd, "fd": fd, "errno": 0, "family": 2, "peer_addr": "127.0.0.1",
        "peer_port": peer_port, "dur_ns": 1,
    }  # fmt: skip


def fdio(ts: int, pid: int, fd: int, sk: int, what: str, eof_ts: int = 0) -> dict[str, Any]:
    return {
        "type": "fdio", "ts": ts, "pid": pid, "tid": pid, "comm": "server", "fd": fd,
        "what": what, "syscall": "read", "errno": 0, "how": "accept", "skaddr": sk,
        "opened_ts": 1, "eof_ts": eof_ts, "reads": 1, "read_bytes": 5, "writes": 0,
        "write_bytes": 0, "eagain_reads": 0, "eagain_writes": 0, "errors": 0,
    }  # fmt: skip


def owner(e: dict[str, Any]) -> tuple[Any, Any, str]:
    return e["owner_pid"], e["owner_fd"], e["owner_how"]


def test_connect_owns_its_syn_sent_though_its_event_comes_after() -> None:
    o = Owners()
    syn = tcp(100, SK_CLI, "CLOSE", "SYN_SENT", 0, 80, cpu=CLI)
    est = tcp(150, SK_CLI, "SYN_SENT", "ESTABLISHED", 40000, 80)
    conn = {"type": "connect", "ts": 120, "dur_ns": 30, "skaddr": SK_CLI, "pid": CLI,
            "comm": "client", "fd": 7}  # fmt: skip
    o.feed([syn, conn, est])
    assert owner(syn) == owner(est) == (CLI, 7, "connect")


def test_a_queued_socket_is_the_listeners_then_the_acceptors() -> None:
    o = Owners()
    listen = tcp(10, 0xC000, "CLOSE", "LISTEN", 8080, 0, cpu=SRV)
    recv = tcp(20, SK_SRV, "LISTEN", "SYN_RECV", 8080, 50000, cpu=CLI)
    est = tcp(21, SK_SRV, "SYN_RECV", "ESTABLISHED", 8080, 50000, cpu=CLI)
    cw = tcp(30, SK_SRV, "ESTABLISHED", "CLOSE_WAIT", 8080, 50000, cpu=CLI)
    o.feed([listen, recv, est, cw])
    assert {owner(e) for e in (recv, est, cw)} == {(SRV, None, "listener")}
    o.feed([accept(40, SRV, 9, 50000)])
    last = tcp(50, SK_SRV, "CLOSE_WAIT", "LAST_ACK", 8080, 50000, cpu=SRV)
    o.feed([last])
    assert owner(last) == (SRV, 9, "accept")


def test_another_namespaces_accept_of_the_same_peer_does_not_take_the_socket() -> None:
    o = Owners()
    o.add_listeners({8080: (SRV, "server", 3)})
    recv = tcp(20, SK_SRV, "LISTEN", "SYN_RECV", 8080, 50000, cpu=CLI)
    o.feed([recv, accept(25, OTHER, 11, 50000)])
    cw = tcp(30, SK_SRV, "ESTABLISHED", "CLOSE_WAIT", 8080, 50000, cpu=CLI)
    o.feed([cw])
    assert owner(cw) == (SRV, None, "listener")
    # Its own accept4 was missed (it began before the probes): the EOF read names it.
    o.feed([fdio(40, SRV, 4, SK_SRV, "eof", eof_ts=40)])
    (stuck,) = o.stuck(now=10**10, older_than_ns=0)
    assert (stuck["owner_pid"], stuck["owner_fd"], stuck["eof_ts"], stuck["closed_ts"]) == (
        SRV, 4, 40, None,
    )  # fmt: skip


def test_close_ends_an_incarnation_and_a_reused_address_starts_unowned() -> None:
    o = Owners()
    conn = {"type": "connect", "ts": 2, "dur_ns": 1, "skaddr": SK_CLI, "pid": CLI,
            "comm": "client", "fd": 7}  # fmt: skip
    o.feed([tcp(1, SK_CLI, "CLOSE", "SYN_SENT", 0, 80, cpu=CLI), conn])
    o.feed([tcp(5, SK_CLI, "FIN_WAIT2", "CLOSE", 40000, 80)])
    assert SK_CLI not in o.owners and SK_CLI not in o.socks
    again = tcp(9, SK_CLI, "LISTEN", "SYN_RECV", 9090, 1234)
    o.feed([again])
    assert owner(again) == (None, None, "unknown")


def test_each_incarnation_in_one_batch_keeps_its_own_owner() -> None:
    """A freed socket's memory is soon another's: two connections on one skaddr
    in one batch (a bomber beside the watch), each owned by its own connect."""
    o = Owners()
    first = [
        tcp(10, SK_CLI, "CLOSE", "SYN_SENT", 0, 80, cpu=CLI),
        {"type": "connect", "ts": 12, "dur_ns": 3, "skaddr": SK_CLI, "pid": CLI,
         "comm": "client", "fd": 7},
        tcp(14, SK_CLI, "ESTABLISHED", "FIN_WAIT1", 40000, 80, cpu=CLI),
        tcp(16, SK_CLI, "FIN_WAIT2", "CLOSE", 40000, 80),
    ]  # fmt: skip
    second = [
        tcp(20, SK_CLI, "CLOSE", "SYN_SENT", 0, 90, cpu=OTHER),
        {"type": "connect", "ts": 22, "dur_ns": 3, "skaddr": SK_CLI, "pid": OTHER,
         "comm": "bomber", "fd": 4},
        tcp(24, SK_CLI, "ESTABLISHED", "FIN_WAIT1", 40002, 90, cpu=OTHER),
    ]  # fmt: skip
    o.feed(first + second)
    assert [owner(e) for e in first if e["type"] == "tcp_state"] == [(CLI, 7, "connect")] * 3
    assert [owner(e) for e in second if e["type"] == "tcp_state"] == [(OTHER, 4, "connect")] * 2
    assert o.owners[SK_CLI].pid == OTHER


def test_stuck_sockets_are_reported_once_with_their_facts() -> None:
    o = Owners()
    o.add_listeners({8080: (SRV, "server", 3)})
    o.feed([
        tcp(20, SK_SRV, "LISTEN", "SYN_RECV", 8080, 50000),
        accept(21, SRV, 9, 50000),
        tcp(30, SK_SRV, "ESTABLISHED", "CLOSE_WAIT", 8080, 50000),
        fdio(31, SRV, 9, SK_SRV, "eof", eof_ts=31),
    ])  # fmt: skip
    assert o.newly_stuck(now=1_000, older_than_ns=10_000) == []  # not for long enough
    (first,) = o.newly_stuck(now=20_000, older_than_ns=10_000)
    assert (first["state"], first["owner_pid"], first["owner_fd"], first["eof_ts"]) == (
        "CLOSE_WAIT", SRV, 9, 31,
    )  # fmt: skip
    assert o.newly_stuck(now=30_000, older_than_ns=10_000) == []
    o.feed([fdio(40, SRV, 9, SK_SRV, "close", eof_ts=31)])
    assert o.stuck(now=30_000, older_than_ns=10_000)[0]["closed_ts"] == 40


def test_an_eof_that_comes_before_its_sockets_transitions_is_kept() -> None:
    """Under load one ring can deliver a batch late: the server's EOF read (fdio)
    arrives before any transition of its socket, and still counts for it; an
    earlier fact on a recycled address does not count for the next socket."""
    o = Owners()
    o.add_listeners({8080: (SRV, "server", 3)})
    o.feed([fdio(31, SRV, 9, SK_SRV, "eof", eof_ts=31), fdio(5, SRV, 8, SK_CLI, "close")])
    o.feed([
        tcp(20, SK_SRV, "LISTEN", "SYN_RECV", 8080, 50000),
        accept(21, SRV, 9, 50000),
        tcp(30, SK_SRV, "ESTABLISHED", "CLOSE_WAIT", 8080, 50000),
        tcp(9, SK_CLI, "CLOSE", "SYN_SENT", 0, 80, cpu=CLI),
    ])  # fmt: skip
    (srv,) = o.stuck(now=40, older_than_ns=0)
    assert (srv["skaddr"], srv["eof_ts"], srv["closed_ts"]) == (SK_SRV, 31, None)
    assert o.socks[SK_CLI].closed_ts == 0


def test_a_closed_sockets_facts_do_not_go_to_the_next_at_its_address() -> None:
    """One batch: a client closes its fd and its socket goes; the server's next
    accepted socket gets the same memory. The close was the client's."""
    o = Owners()
    o.add_listeners({8080: (SRV, "server", 3)})
    o.feed([
        tcp(1, SK_CLI, "CLOSE", "SYN_SENT", 0, 80, cpu=CLI),
        fdio(5, CLI, 7, SK_CLI, "close"),
        tcp(6, SK_CLI, "FIN_WAIT2", "CLOSE", 40000, 80),
        tcp(20, SK_CLI, "LISTEN", "SYN_RECV", 8080, 50000),
        accept(21, SRV, 9, 50000),
        tcp(30, SK_CLI, "ESTABLISHED", "CLOSE_WAIT", 8080, 50000),
    ])  # fmt: skip
    (srv,) = o.stuck(now=40, older_than_ns=0)
    assert (srv["owner_pid"], srv["owner_fd"], srv["closed_ts"]) == (SRV, 9, None)


def test_tables_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(owners_mod, "MAX_SOCKETS", 100)
    o = Owners()
    for i in range(1000):
        sk = 0x10000 + i
        o.feed([
            tcp(3 * i, sk, "CLOSE", "SYN_SENT", 0, 80, cpu=CLI),
            {"type": "connect", "ts": 3 * i + 1, "dur_ns": 1, "skaddr": sk, "pid": CLI,
             "comm": "c", "fd": i},
            tcp(3 * i + 2, sk, "LISTEN", "SYN_RECV", 80, 1000 + i),
        ])  # fmt: skip
    assert len(o.owners) == len(o.socks) == len(o.passive) == 100
    assert 0x10000 + 999 in o.owners and 0x10000 not in o.owners  # the oldest went first
