"""`tcplab watch`'s port filters as a user runs them: -L (local port), -D
(remote port) and both together, on real sockets with real eBPF."""

from __future__ import annotations

import os
import socket

import pytest
from watch_harness import (
    CLIENT,
    LISTENER,
    SERVER_CHILD,
    Watch,
    closed,
    seen_in_mode,
    socket_of,
    tcp_lines,
    transitions,
)

pytestmark = [pytest.mark.root, pytest.mark.bpf]


def test_watch_lport_shows_the_local_side_only() -> None:
    """-L PORT: the listener and the server's child (local port PORT), never
    the client, whose local port is its ephemeral one."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    w = Watch("-L", str(port), "--probe", "tcp_state")
    try:
        srv.listen()
        cli = socket.create_connection(("127.0.0.1", port))
        cport = cli.getsockname()[1]
        child, _ = srv.accept()
        cli.close()
        assert child.recv(1) == b""  # the client's FIN is in: the child closes second
        child.close()
        srv.close()
        w.until(closed(2), "closes of the child and the listener")
    finally:
        code, last = w.stop()
    assert code == 0 and last.startswith("drops: 0 (tcp_state ")
    assert {int(m["sport"]) for m in tcp_lines(w.lines)} == {port}
    listener, server = socket_of(w.lines, port, 0), socket_of(w.lines, port, cport)
    assert transitions(w.lines, listener) == seen_in_mode(LISTENER)
    assert transitions(w.lines, server) == seen_in_mode(SERVER_CHILD)
    # The child's first change names its own 4-tuple on every kernel (before
    # 6.15 the kernel reports the listener's: probes/tcp_state.bpf.c holds it).
    first = [
        (m["saddr"], int(m["sport"]), m["daddr"], int(m["dport"]))
        for m in tcp_lines(w.lines)
        if m["sk"] == server and (m["old"], m["new"]) == ("LISTEN", "SYN_RECV")
    ]
    want = [("127.0.0.1", port, "127.0.0.1", cport)]
    assert first == (want if os.environ.get("TCPLAB_ATTACH") != "kprobe" else [])


def test_watch_dport_shows_the_remote_side_only() -> None:
    """-D PORT: the client's socket (remote port PORT) from SYN_SENT, whose
    source port is still 0 (tcp_v4_connect sets the state before choosing it)."""
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    w = Watch("-D", str(port), "--probe", "tcp_state")
    try:
        cli = socket.create_connection(("127.0.0.1", port))
        cport = cli.getsockname()[1]
        child, _ = srv.accept()
        cli.close()
        assert child.recv(1) == b""
        child.close()
        w.until(closed(1), "the client's close")
    finally:
        code, last = w.stop()
        srv.close()
    assert code == 0 and last.startswith("drops: 0 (tcp_state ")
    assert {int(m["dport"]) for m in tcp_lines(w.lines)} == {port}
    client = socket_of(w.lines, cport, port)
    ours = [m for m in tcp_lines(w.lines) if m["sk"] == client]
    assert [(int(m["sport"]), int(m["dport"])) for m in ours] == [(0, port)] + [
        (cport, port)
    ] * 4, "\n".join(w.lines)
    assert transitions(w.lines, client) == CLIENT, "\n".join(w.lines)


def test_watch_lport_and_dport_together_select_one_connection() -> None:
    """-L A -D B: only the server child of the client bound to port B, its
    whole life, LISTEN -> SYN_RECV included (before 6.15 the kernel reports
    that change with the listener's ports, dport 0: the probe holds it until
    the child's own are known); the listener, the client and another
    client's connection stay out."""
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    chosen = socket.socket()
    chosen.bind(("127.0.0.1", 0))
    cport = chosen.getsockname()[1]
    w = Watch("-L", str(port), "-D", str(cport), "--probe", "tcp_state")
    try:
        other = socket.create_connection(("127.0.0.1", port))
        chosen.connect(("127.0.0.1", port))
        children = [srv.accept()[0] for _ in range(2)]
        for s in (other, chosen):
            s.close()
        for c in children:
            assert c.recv(1) == b""
            c.close()
        w.until(closed(1), "the chosen child's close")
    finally:
        code, last = w.stop()
        srv.close()
    assert code == 0 and last.startswith("drops: 0 (tcp_state ")
    assert {(int(m["sport"]), int(m["dport"])) for m in tcp_lines(w.lines)} == {(port, cport)}
    assert transitions(w.lines) == seen_in_mode(SERVER_CHILD)
