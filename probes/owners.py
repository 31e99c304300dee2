"""Who owns each socket, learned from kernel events alone, for `tcplab watch`.

A tcp_state transition carries whoever was on the CPU (often the peer, or a
softirq's victim). The owner is the process that holds the socket's fd:
- connect: the connect probe names the socket (skaddr) its caller moved to
  SYN_SENT inside the call, with the caller's pid and fd;
- accept: accept4 returns the fd and the peer's address; the server-side
  socket with that peer (its LISTEN -> SYN_RECV transition carries it) is
  the one accepted;
- listener: before accept4 takes it, a server-side socket sits in its
  listener's queue, owned by whoever owns the listener (fd not known yet):
  the process that called listen() (CLOSE -> LISTEN runs in its context) or
  that accepted on the same port;
- the syscall barrier (fdio) names the skaddr of a fd at its first read or
  write, and says when the fd read EOF and when it was closed.

Everything is held per socket in bounded dicts (oldest dropped first), so
that a machine-wide watch over hours keeps a fixed size; a socket's entry
goes when it reaches CLOSE. Events must come in time order per batch; the
owners a batch brings are applied first, each from the moment it started
(a connect's SYN_SENT happens inside the call, before its exit event).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

Event = dict[str, Any]

# Sockets held at most (owners, states, fd facts each): 100k live sockets
# hold 57 MiB, the cap 81 MiB (bench/owners.py, ~600 B per socket).
MAX_SOCKETS = 131072
STUCK_STATES = ("CLOSE_WAIT", "FIN_WAIT2")


@dataclass(slots=True)
class Owner:
    pid: int
    comm: str
    fd: int
    how: str  # "accept", "connect", "listener", or how fdio saw it handed over
    since: int  # ns: the owner holds the socket from this time on


@dataclass(slots=True)
class Sock:
    """What watch knows of one socket: its last state and its fd's facts."""

    state: str
    since: int  # ns: when it entered `state`
    tuple4: str  # "saddr:sport -> daddr:dport"
    sport: int
    peer: tuple[str, int]  # (daddr, dport)
    passive: bool  # a server-side socket (it went LISTEN -> SYN_RECV)
    eof_ts: int = 0  # its fd read EOF at (0: not seen)
    closed_ts: int = 0  # its fd was closed at (0: not seen)
    reported: bool = False  # already listed as stuck


def _put(table: dict[Any, Any], key: Any, value: Any) -> None:
    """Insert, dropping the oldest entry when the table is full."""
    if key not in table and len(table) >= MAX_SOCKETS:
        del table[next(iter(table))]
    table[key] = value


class Owners:
    def __init__(self) -> None:
        self.owners: dict[int, Owner] = {}  # skaddr -> owner
        self.socks: dict[int, Sock] = {}  # skaddr -> state and facts
        self.passive: dict[tuple[str, int], int] = {}  # peer (addr, port) -> server skaddr
        self.listeners: dict[int, Owner] = {}  # local port -> the listener's owner
        # A freed socket's memory is soon another socket's: one batch can hold
        # several incarnations of an skaddr. The owners the batch brings, per
        # skaddr in time order (with the one held before), so that each
        # transition finds its own (seen with a bomber beside the watch).
        self._learned: dict[int, list[Owner]] = {}
        # fd facts (ts, eof_ts, closed_ts) that came before any transition of
        # their socket: under load one ring's records can come a poll later
        # than another's.
        self.early: dict[int, tuple[int, int, int]] = {}

    def add_listeners(self, known: dict[int, tuple[int, str, int]]) -> None:
        """Listeners that existed before the probes (port -> pid, comm, fd)."""
        for port, (pid, comm, fd) in known.items():
            _put(self.listeners, port, Owner(pid, comm, fd, "listener", 0))

    def feed(self, events: Iterable[Event]) -> None:
        """Learn from a time-ordered batch and stamp its tcp_state events with
        owner_pid, owner_comm, owner_fd, owner_how (None/"unknown" if none)."""
        batch = list(events)
        self._learned.clear()
        for e in batch:
            kind = e["type"]
            if kind == "connect" and e["skaddr"]:
                self._own(e["skaddr"], e, "connect", e["ts"] - e["dur_ns"])
            elif kind == "fdio" and e["skaddr"]:
                self._fd_owner(e)
        for e in batch:
            kind = e["type"]
            if kind == "tcp_state":
                self._transition(e)
            elif kind == "accept" and e["errno"] == 0:
                self._accepted(e)
            elif kind == "fdio" and e["skaddr"]:
                # In time order with the transitions: a fact after the CLOSE
                # of its socket must not go to the next socket at that
                # address (a client's close became a server socket's).
                self._fd_fact(e)

    def _accepted(self, e: Event) -> None:
        key = (e["peer_addr"], e["peer_port"])
        sk = self.passive.get(key)
        s = self.socks.get(sk) if sk is not None else None
        if sk is None or s is None:
            return
        # Namespaces share loopback addresses: the same peer may be another
        # namespace's connection, accepted by whoever owns that listener.
        lst = self.listeners.get(s.sport)
        if lst is not None and lst.pid != e["pid"]:
            return
        del self.passive[key]
        self._own(sk, e, "accept", e["ts"])
        _put(self.listeners, s.sport, Owner(e["pid"], e["comm"], e["lfd"], "listener", e["ts"]))

    def _own(self, sk: int, e: Event, how: str, since: int) -> None:
        new = Owner(e["pid"], e["comm"], e["fd"], how, since)
        held = self.owners.get(sk)
        learned = self._learned.get(sk)
        if learned is None:
            learned = self._learned[sk] = [held] if held is not None else []
        learned.append(new)
        if held is None or held.since <= since:  # the table keeps the newest
            _put(self.owners, sk, new)

    def _owner_at(self, sk: int, t: int) -> Owner | None:
        """The owner of `sk` at `t`: the newest known from at or before `t`."""
        learned = self._learned.get(sk)
        if learned is None:
            owner = self.owners.get(sk)
            return owner if owner is not None and owner.since <= t else None
        earlier = [o for o in learned if o.since <= t]
        return max(earlier, key=lambda o: o.since) if earlier else None

    def _fd_owner(self, e: Event) -> None:
        sk = e["skaddr"]
        known = self.owners.get(sk)
        if known is None or known.pid != e["pid"] or known.fd != e["fd"]:
            self._own(sk, e, e["how"], e["opened_ts"] or e["ts"])
        s = self.socks.get(sk)
        if s is not None and s.passive and self.passive.get(s.peer) == sk:
            del self.passive[s.peer]  # accepted: its accept4 was not seen

    def _fd_fact(self, e: Event) -> None:
        s = self.socks.get(e["skaddr"])
        if s is None:
            closed = e["ts"] if e["what"] == "close" else 0
            eof, was_closed = self.early.get(e["skaddr"], (0, 0, 0))[1:]
            _put(self.early, e["skaddr"], (e["ts"], e["eof_ts"] or eof, closed or was_closed))
            return
        s.eof_ts = e["eof_ts"] or s.eof_ts
        if e["what"] == "close":
            s.closed_ts = e["ts"]

    def _transition(self, e: Event) -> None:
        sk, t, new = e["skaddr"], e["ts"], e["new"]
        old = self.socks.get(sk)
        passive = new == "SYN_RECV" or (old is not None and old.passive)
        owner = self._owner_at(sk, t)
        if owner is None and passive:
            owner = self.listeners.get(e["sport"])  # still in the accept queue
        fd = owner.fd if owner is not None and owner.how != "listener" else None
        e["owner_pid"] = owner.pid if owner else None
        e["owner_comm"] = owner.comm if owner else None
        e["owner_fd"] = fd
        e["owner_how"] = owner.how if owner else "unknown"
        if new == "LISTEN":  # listen() runs in its caller's context
            lst = Owner(e["cpu_pid"], e["cpu_comm"], -1, "listener", t)
            _put(self.listeners, e["sport"], lst)
        if new == "SYN_RECV":
            _put(self.passive, (e["daddr"], e["dport"]), sk)
        early = self.early.pop(sk, None)
        if new == "CLOSE":
            gone = self.socks.pop(sk, None)
            if gone is not None and self.passive.get(gone.peer) == sk:
                del self.passive[gone.peer]
            mine = self.owners.get(sk)
            if mine is not None and mine.since <= t:
                del self.owners[sk]
            if sk in self._learned:  # what is left: later incarnations'
                self._learned[sk] = [o for o in self._learned[sk] if o.since > t]
            return
        tuple4 = f"{e['saddr']}:{e['sport']} -> {e['daddr']}:{e['dport']}"
        sock = Sock(new, t, tuple4, e["sport"], (e["daddr"], e["dport"]), passive)
        if old is not None:  # the fd's facts stay with the socket
            sock.eof_ts, sock.closed_ts = old.eof_ts, old.closed_ts
        elif early is not None and early[0] >= t:  # this incarnation's, come first
            sock.eof_ts, sock.closed_ts = early[1], early[2]
        _put(self.socks, sk, sock)

    def stuck(self, now: int, older_than_ns: int) -> list[Event]:
        """Sockets in CLOSE_WAIT or FIN_WAIT2 for longer than `older_than_ns`
        at `now`, oldest first, with their owner and fd facts."""
        out: list[Event] = []
        for sk, s in self.socks.items():
            if s.state not in STUCK_STATES or now - s.since < older_than_ns:
                continue
            o = self.owners.get(sk)
            if o is None and s.passive:
                o = self.listeners.get(s.sport)
            out.append(
                {
                    "type": "stuck",
                    "skaddr": sk,
                    "state": s.state,
                    "since": s.since,
                    "for_s": round((now - s.since) / 1e9, 3),
                    "tuple": s.tuple4,
                    "owner_pid": o.pid if o else None,
                    "owner_comm": o.comm if o else None,
                    "owner_fd": o.fd if o and o.how != "listener" else None,
                    "owner_how": o.how if o else "unknown",
                    "eof_ts": s.eof_ts or None,
                    "closed_ts": s.closed_ts or None,
                }
            )
        out.sort(key=lambda r: r["since"])
        return out

    def newly_stuck(self, now: int, older_than_ns: int) -> list[Event]:
        """stuck() limited to the sockets not reported before (each once per state)."""
        fresh = []
        for r in self.stuck(now, older_than_ns):
            s = self.socks[r["skaddr"]]
            if not s.reported:
                s.reported = True
                fresh.append(r)
        return fresh
