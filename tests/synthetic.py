"""Synthetic recordings: what the orchestrator would record for a scripted lab.

A test helper, not part of the product: the tests import it as `synthetic`
(small exact cases), bench/ as `tests.synthetic` (millions of events,
streamed to disk so the generator itself stays small). It writes frames
with bus.schema.encode, the orchestrator's own encoder. The kernel sequences
follow what inet_sock_set_state reports on loopback: the client's
CLOSE->SYN_SENT carries sport 0, the server's child appears as
LISTEN->SYN_RECV, the active closer ends FIN_WAIT2->CLOSE (a timewait socket
takes over, never reported; an orphaned closer does so as soon as its FIN
is acked, even while the peer still sits in CLOSE_WAIT), and peer-side
transitions run in softirq context so their cpu_pid is not the owner's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bus.schema import Envelope, Kind, encode

SOFTIRQ_PID = 0
US = 1_000


@dataclass(frozen=True)
class Actor:
    name: str
    pid: int
    addr: str = "127.0.0.1"


@dataclass
class Pair:
    """Both ends of one synthetic connection."""

    client: Actor
    server: Actor
    csk: int
    ssk: int
    cport: int
    sport: int
    cfd: int
    sfd: int
    cstate: str = "ESTABLISHED"
    sstate: str = "ESTABLISHED"


@dataclass
class _Batch:
    kind: Kind
    key: str
    items: list[dict[str, Any]] = field(default_factory=list)
    first_ts: int = 0


class RecordingWriter:
    """Appends envelopes to a recording the way the orchestrator does.

    Kernel events go out in batches of `batch` from the sender "probes";
    each actor's records in batches of `app_batch` from "actor:<name>". A
    batch is also sent once it is `linger_ns` old, as the real senders do,
    so batches from different senders interleave out of time order.
    """

    def __init__(
        self,
        path: Path,
        batch: int = 1000,
        app_batch: int = 50,
        linger_ns: int = 20_000_000,
        kernel_until_ns: int | None = None,
    ) -> None:
        self.f: IO[bytes] = open(path, "wb")
        # The probe process died then: no kernel event after it, no eof.
        self.kernel_until_ns = kernel_until_ns
        self.batch = batch
        self.app_batch = app_batch
        self.linger_ns = linger_ns
        self.seq: dict[str, int] = {}
        self.pending: dict[tuple[str, str], _Batch] = {}
        self.now = 0
        self.kernel_events = 0
        self._tick = 0

    def _send(self, kind: Kind, sender: str, body: dict[str, Any], mono_ns: int) -> None:
        seq = self.seq.get(sender, 0) + 1
        self.seq[sender] = seq
        self.f.write(encode(Envelope(kind, sender, seq, mono_ns, body)))

    def _flush(self, key: tuple[str, str]) -> None:
        b = self.pending.pop(key)
        sender, probe = key
        if b.kind is Kind.KERNEL:
            body: dict[str, Any] = {"probe": probe, "events": b.items}
        else:
            body = {"records": b.items}
        self._send(b.kind, sender, body, self.now)

    def _add(self, kind: Kind, sender: str, probe: str, item: dict[str, Any], ts: int) -> None:
        self.now = max(self.now, ts)
        key = (sender, probe)
        b = self.pending.get(key)
        if b is None:
            b = self.pending[key] = _Batch(kind, probe, first_ts=ts)
        b.items.append(item)
        limit = self.batch if kind is Kind.KERNEL else self.app_batch
        if len(b.items) >= limit:
            self._flush(key)
        self._tick += 1
        if self._tick % 64 == 0:
            for k in [k for k, v in self.pending.items() if v.first_ts < self.now - self.linger_ns]:
                self._flush(k)

    def kernel(self, ev: dict[str, Any]) -> None:
        if self.kernel_until_ns is not None and ev["ts"] > self.kernel_until_ns:
            return
        self.kernel_events += 1
        self._add(Kind.KERNEL, "probes", ev["type"], ev, ev["ts"])

    def app(self, rec: dict[str, Any]) -> None:
        self._add(Kind.LOG, f"actor:{rec['actor']}", "", rec, rec["mono_ns"])

    def stats(self, sender: str, body: dict[str, Any], mono_ns: int) -> None:
        self.now = max(self.now, mono_ns)
        self._send(Kind.STATS, sender, body, mono_ns)

    def raw(self, data: bytes) -> None:
        """Bytes as they are: for damaged-recording tests."""
        self.f.write(data)

    def close(self, eof: bool = True) -> None:
        for key in list(self.pending):
            self._flush(key)
        if eof:
            for sender in list(self.seq):
                if sender == "probes" and self.kernel_until_ns is not None:
                    continue
                self._send(Kind.EOF, sender, {"last_seq": self.seq[sender] + 1}, self.now)
        self.f.close()


class Lab:
    """Scripts TCP episodes on loopback and writes their kernel and app sides."""

    def __init__(self, w: RecordingWriter, irq_pid: int = SOFTIRQ_PID) -> None:
        self.w = w
        self.irq_pid = irq_pid
        self._free_sk: list[tuple[int, int]] = []
        self._next_sk = 0xFFFF_8880_0000_0000
        self._fds: dict[int, int] = {}

    # -- primitives ---------------------------------------------------------

    def skaddr(self, ts: int) -> int:
        # Freed socket memory is handed out again, as the slab allocator does,
        # but never before the time it was freed.
        for i in range(len(self._free_sk) - 1, -1, -1):
            if self._free_sk[i][0] < ts:
                return self._free_sk.pop(i)[1]
        self._next_sk += 0x800
        return self._next_sk

    def free(self, sk: int, ts: int) -> None:
        self._free_sk.append((ts, sk))

    def fd(self, actor: Actor) -> int:
        n = self._fds.get(actor.pid, 3) + 1
        self._fds[actor.pid] = n
        return n

    def state(
        self,
        ts: int,
        sk: int,
        old: str,
        new: str,
        local: tuple[str, int],
        remote: tuple[str, int],
        cpu_pid: int,
        comm: str = "",
    ) -> None:
        self.w.kernel(
            {
                "type": "tcp_state",
                "ts": ts,
                "skaddr": sk,
                "cpu_pid": cpu_pid,
                "cpu_tid": cpu_pid,
                "cpu_comm": comm or ("swapper/0" if cpu_pid == 0 else "py"),
                "family": 2,
                "saddr": local[0],
                "sport": local[1],
                "daddr": remote[0],
                "dport": remote[1],
                "old": old,
                "new": new,
            }
        )

    def log(self, actor: Actor, ts: int, event: str, **fields: Any) -> None:
        rec = {
            "event": event,
            "actor": actor.name,
            "pid": actor.pid,
            "mono_ns": ts,
            "wall": ts / 1e9,
            "level": "info",
        }
        rec.update(fields)
        self.w.app(rec)

    def accept_event(
        self,
        ts: int,
        server: Actor,
        fd: int,
        peer: tuple[str, int] = ("", 0),
        errno: int = 0,
        tid: int | None = None,
    ) -> None:
        self.w.kernel(
            {
                "type": "accept",
                "ts": ts,
                "pid": server.pid,
                "tid": tid or server.pid,
                "comm": server.name,
                "syscall": "accept4",
                "lfd": 3,
                "fd": fd,
                "errno": errno,
                "family": 2 if peer[1] else 0,
                "peer_addr": peer[0],
                "peer_port": peer[1],
                "dur_ns": 2 * US,
            }
        )

    def epoll_event(
        self,
        ts: int,
        actor: Actor,
        tid: int,
        ready: int,
        timeout_ms: int = -1,
        comm: str | None = None,
    ) -> None:
        self.w.kernel(
            {
                "type": "epoll",
                "ts": ts,
                "pid": actor.pid,
                "tid": tid,
                "comm": comm or actor.name,
                "syscall": "epoll_wait",
                "epfd": 3,
                "maxevents": 1024,
                "timeout_ms": timeout_ms,
                "ready": ready,
                "errno": 0,
                "dur_ns": 50 * US,
            }
        )

    # -- episodes -------------------------------------------------------------

    def listen(self, ts: int, server: Actor, port: int) -> int:
        sk = self.skaddr(ts)
        self.state(ts, sk, "CLOSE", "LISTEN", (server.addr, port), ("0.0.0.0", 0), server.pid)
        self.log(server, ts + US, "listen", fd=3, laddr=server.addr, lport=port)
        return sk

    def connect(
        self,
        ts: int,
        client: Actor,
        server: Actor,
        cport: int,
        sport: int,
        accept: bool = True,
        log_accept: bool = True,
    ) -> Pair:
        """Handshake on loopback; the server's accept4 and both app records."""
        csk, ssk = self.skaddr(ts), self.skaddr(ts)
        c, s = (client.addr, cport), (server.addr, sport)
        irq = self.irq_pid
        self.state(ts, csk, "CLOSE", "SYN_SENT", (client.addr, 0), s, client.pid)
        self.state(ts + 10 * US, ssk, "LISTEN", "SYN_RECV", s, c, irq)
        self.state(ts + 20 * US, csk, "SYN_SENT", "ESTABLISHED", c, s, irq)
        cfd = self.fd(client)
        self.log(
            client, ts + 25 * US, "connect", fd=cfd, laddr=c[0], lport=c[1], raddr=s[0], rport=s[1]
        )
        self.state(ts + 30 * US, ssk, "SYN_RECV", "ESTABLISHED", s, c, irq)
        sfd = -1
        if accept:
            sfd = self.fd(server)
            self.accept_event(ts + 40 * US, server, sfd, c)
            if log_accept:
                self.log(
                    server,
                    ts + 45 * US,
                    "accept",
                    fd=sfd,
                    laddr=s[0],
                    lport=s[1],
                    raddr=c[0],
                    rport=c[1],
                )
        return Pair(client, server, csk, ssk, cport, sport, cfd, sfd)

    def client_close(
        self,
        ts: int,
        p: Pair,
        server_closes: bool = True,
        server_delay_ns: int = 40 * US,
        server_reads_fin: bool = True,
    ) -> None:
        """The client closes first; the server closes `server_delay_ns` later
        unless it leaks (and, unless `server_reads_fin` is False, logs reading
        the FIN first). As on a real kernel, the orphaned client leaves
        FIN_WAIT2 for a timewait socket as soon as its FIN is acked."""
        c, s = (p.client.addr, p.cport), (p.server.addr, p.sport)
        irq = self.irq_pid
        self.state(ts, p.csk, "ESTABLISHED", "FIN_WAIT1", c, s, p.client.pid)
        self.log(
            p.client, ts + 5 * US, "close", fd=p.cfd, laddr=c[0], lport=c[1], raddr=s[0], rport=s[1]
        )
        self.state(ts + 10 * US, p.ssk, "ESTABLISHED", "CLOSE_WAIT", s, c, irq)
        self.state(ts + 20 * US, p.csk, "FIN_WAIT1", "FIN_WAIT2", c, s, irq)
        self.state(ts + 22 * US, p.csk, "FIN_WAIT2", "CLOSE", c, s, irq)
        self.free(p.csk, ts + 22 * US)
        p.cstate, p.sstate = "CLOSE", "CLOSE_WAIT"
        if p.sfd >= 0 and server_reads_fin:
            self.log(p.server, ts + 30 * US, "peer_close", fd=p.sfd)
        if not server_closes:
            return
        t = ts + max(server_delay_ns, 40 * US)
        self.state(t, p.ssk, "CLOSE_WAIT", "LAST_ACK", s, c, p.server.pid)
        self.state(t + 20 * US, p.ssk, "LAST_ACK", "CLOSE", s, c, irq)
        if p.sfd >= 0:
            self.log(p.server, t + 25 * US, "close", fd=p.sfd)
        self.free(p.ssk, t + 20 * US)
        p.sstate = "CLOSE"

    def reset(self, ts: int, p: Pair) -> None:
        """The client aborts (SO_LINGER 0): both ends go straight to CLOSE."""
        c, s = (p.client.addr, p.cport), (p.server.addr, p.sport)
        self.state(ts, p.csk, "ESTABLISHED", "CLOSE", c, s, p.client.pid)
        self.state(ts + 10 * US, p.ssk, "ESTABLISHED", "CLOSE", s, c, self.irq_pid)
        self.log(p.client, ts + 15 * US, "close", fd=p.cfd)
        self.free(p.csk, ts)
        self.free(p.ssk, ts + 10 * US)

    def failed_connect(
        self,
        ts: int,
        client: Actor,
        dest: tuple[str, int],
        error: str = "EADDRNOTAVAIL",
        errno: int = 99,
        log: bool = True,
    ) -> None:
        """No port left: CLOSE->SYN_SENT->CLOSE with sport 0, in the caller's
        context; `log=False`: the actor logged no record of it (a sample)."""
        sk = self.skaddr(ts)
        self.state(ts, sk, "CLOSE", "SYN_SENT", (client.addr, 0), dest, client.pid)
        self.state(ts + 2 * US, sk, "SYN_SENT", "CLOSE", (client.addr, 0), dest, client.pid)
        if log:
            self.log(
                client,
                ts + 5 * US,
                "connect_failed",
                fd=self.fd(client),
                raddr=dest[0],
                rport=dest[1],
                errno=errno,
                error=error,
                level="warning",
            )
        self.free(sk, ts + 2 * US)

    def refused(self, ts: int, client: Actor, dest: tuple[str, int], cport: int) -> None:
        """Nobody listens: the SYN is answered by RST, connect() gets ECONNREFUSED."""
        sk = self.skaddr(ts)
        self.state(ts, sk, "CLOSE", "SYN_SENT", (client.addr, 0), dest, client.pid)
        self.state(ts + 10 * US, sk, "SYN_SENT", "CLOSE", (client.addr, cport), dest, self.irq_pid)
        self.log(
            client,
            ts + 15 * US,
            "connect_failed",
            fd=self.fd(client),
            raddr=dest[0],
            rport=dest[1],
            errno=111,
            error="ECONNREFUSED",
            level="warning",
        )
        self.free(sk, ts + 10 * US)

    def accept_failed(self, ts: int, server: Actor, errno: int, error: str) -> None:
        self.accept_event(ts, server, -1, errno=errno)
        self.log(server, ts + 5 * US, "accept_failed", errno=errno, error=error, level="error")

    def observer(self, ts: int, states: dict[str, int], fds: dict[str, int] | None = None) -> None:
        self.w.stats(
            "actor:observer",
            {"source": "observer", "mono_ns": ts, "states": states, "fds": fds or {}},
            ts,
        )

    def probe_stats(self, ts: int, programs: dict[str, dict[str, int]]) -> None:
        self.w.stats("probes", {"source": "probes", "programs": programs}, ts)


def write_run_json(run_dir: Path, meta: dict[str, Any]) -> None:
    (run_dir / "run.json").write_text(json.dumps(meta, indent=2))
