"""The correlator's joins of owner facts to connections, rule by rule, on
synthetic recordings: which life a record or an accept4 call names when
file descriptors, peers and time make it ambiguous. These are the rules a
rewrite of correlator/joins.py as as-of joins must keep (docs/report.md)."""

from __future__ import annotations

from pathlib import Path

from correlator_harness import CLIENT, LEAKER, MS, SERVER, T0, replay
from synthetic import Lab

US = 1_000
C_ADDR, S_ADDR = CLIENT.addr, SERVER.addr


def _tuple(lport: int, rport: int) -> dict[str, object]:
    return {"laddr": C_ADDR, "lport": lport, "raddr": S_ADDR, "rport": rport}


def test_a_reused_fd_names_the_socket_that_holds_it_now(tmp_path: Path) -> None:
    """A record with only (pid, fd) joins the socket that fd names at its
    time: none between a close and the fd's reuse, the new socket after."""
    fds: dict[str, int] = {}

    def script(lab: Lab) -> None:
        lab.listen(T0, SERVER, 8080)
        p1 = lab.connect(T0 + MS, CLIENT, SERVER, 41000, 8080)
        fds["reused"] = p1.sfd
        lab.client_close(T0 + 2 * MS, p1)  # the server closes its fd at ~+2.065 ms
        lab.log(SERVER, T0 + 3 * MS, "peer_close", fd=p1.sfd)  # the fd is free
        p2 = lab.connect(T0 + 4 * MS, CLIENT, SERVER, 41001, 8080, accept=False)
        # The server's next accept4 hands out the same fd number again.
        lab.accept_event(T0 + 4 * MS + 40 * US, SERVER, p1.sfd, (C_ADDR, 41001))
        lab.log(SERVER, T0 + 5 * MS, "peer_close", fd=p1.sfd)
        assert p2.sfd == -1

    run = replay(tmp_path, script)
    servers = [c for c in run.conns if c["role"] == "passive"]
    assert [41000, 41001] == [c["rport"] for c in servers]
    late = [r for r in run.sink.events if r["type"] == "peer_close"]
    assert [T0 + 2 * MS + 30 * US, T0 + 3 * MS, T0 + 5 * MS] == [r["ts"] for r in late]
    assert [servers[0]["id"], None, servers[1]["id"]] == [r["conn"] for r in late]
    assert {"accept": 1, "peer_close": 1, "close": 1} == servers[0]["app"]
    assert {"peer_close": 1} == servers[1]["app"]
    owner = {"actor": "server", "pid": 100, "fd": fds["reused"], "via": "accept4"}
    assert owner == servers[1]["owner"]


def test_a_record_within_the_grace_reaches_a_closed_connection(tmp_path: Path) -> None:
    """A connection stays joinable for the grace (500 ms of event time) after
    its close: a connect record logged 100 ms late still gives it its owner,
    one logged when more than the grace has passed finds nothing."""

    def closed_connect(lab: Lab, t: int, sk: int, port: int) -> None:
        # cpu pid 999 is no actor's: no owner from the on-CPU guess.
        srv = (S_ADDR, 9999)
        lab.state(t, sk, "CLOSE", "SYN_SENT", (C_ADDR, 0), srv, 999)
        lab.state(t + 10 * US, sk, "SYN_SENT", "ESTABLISHED", (C_ADDR, port), srv, 999)
        lab.state(t + 20 * US, sk, "ESTABLISHED", "CLOSE", (C_ADDR, port), srv, 999)

    def script(lab: Lab) -> None:
        closed_connect(lab, T0 + MS, 0xA000, 42000)
        lab.log(CLIENT, T0 + 101 * MS, "connect", fd=5, **_tuple(42000, 9999))
        closed_connect(lab, T0 + 200 * MS, 0xB000, 42001)
        # Event time moves on past the grace before the record arrives.
        lab.listen(T0 + 800 * MS, SERVER, 8080)
        lab.log(CLIENT, T0 + 900 * MS, "connect", fd=6, **_tuple(42001, 9999))

    run = replay(tmp_path, script)
    first, second = sorted(
        (c for c in run.conns if c["role"] == "active"), key=lambda c: c["lport"]
    )
    assert {"actor": "client", "pid": 200, "fd": 5, "via": "app:connect"} == first["owner"]
    assert second["owner"] is None
    records = [r for r in run.sink.events if r["type"] == "connect"]
    assert [first["id"], None] == [r["conn"] for r in records]


def test_a_real_owner_fact_overrides_the_on_cpu_guess(tmp_path: Path) -> None:
    """connect() runs in the caller's context, so the on-CPU pid of
    CLOSE -> SYN_SENT is a guess of the owner; a record of another process
    (the socket handed to a child, say) naming the connection replaces it."""

    def script(lab: Lab) -> None:
        lab.listen(T0, SERVER, 8080)
        sk, srv = 0xC000, (S_ADDR, 8080)
        lab.state(T0 + MS, sk, "CLOSE", "SYN_SENT", (C_ADDR, 0), srv, CLIENT.pid)
        lab.state(T0 + MS + 20 * US, sk, "SYN_SENT", "ESTABLISHED", (C_ADDR, 43000), srv, 0)
        lab.log(LEAKER, T0 + MS + 30 * US, "connect", fd=7, **_tuple(43000, 8080))

    run = replay(tmp_path, script)
    client = next(c for c in run.conns if c["role"] == "active")
    assert {"actor": "leaker", "pid": 300, "fd": 7, "via": "app:connect"} == client["owner"]
    # The SYN_SENT row shows the owner known a grace after it: the real one.
    syn = next(r for r in run.sink.events if r["type"] == "tcp_state" and r["new"] == "SYN_SENT")
    assert (CLIENT.pid, 300, False) == (syn["cpu_pid"], syn["owner"]["pid"], syn["cpu_is_owner"])


def test_accept4_claims_the_child_of_its_peer_not_the_oldest(tmp_path: Path) -> None:
    """Two children wait in the listener's queue; accept4 calls that take
    them in the other order each get the child of the peer they return."""

    def script(lab: Lab) -> None:
        lab.listen(T0, SERVER, 8080)
        lab.connect(T0 + MS, CLIENT, SERVER, 44000, 8080, accept=False)
        lab.connect(T0 + 2 * MS, CLIENT, SERVER, 44001, 8080, accept=False)
        lab.accept_event(T0 + 3 * MS, SERVER, 10, (C_ADDR, 44001))
        lab.accept_event(T0 + 4 * MS, SERVER, 11, (C_ADDR, 44000))

    run = replay(tmp_path, script)
    children = {c["rport"]: c for c in run.conns if c["role"] == "passive"}
    assert {44000: 11, 44001: 10} == {p: c["owner"]["fd"] for p, c in children.items()}
    assert all(c["accepted"] and c["owner"]["via"] == "accept4" for c in children.values())
    accepts = [r for r in run.sink.events if r["type"] == "accept"]
    assert [children[44001]["id"], children[44000]["id"]] == [r["conn"] for r in accepts]
