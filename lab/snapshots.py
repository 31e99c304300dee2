"""Socket snapshots of a two-host lab, written to snapshots.jsonl.

Up to SNAPSHOT_HZ times a second, sock_diag in every host's namespace, for
the lab's ports only (the kernel filters), one JSON line per socket:
- "established": once per socket, the first time it is seen ESTABLISHED —
  what the handshake negotiated (MSS both ways, advmss, pmtu, window
  scales, options) and the congestion algorithm;
- "sample": every time — rtt, rttvar, cwnd, ssthresh, retransmits, probes,
  backoff, rcv_space, rwnd_limited, the timer running and when it expires;
- "gone": the first snapshot a socket is no longer in (with the time it was
  last seen), so a keepalive that gave up shows when it did.
Sockets are told apart by their kernel cookie (a reused 4-tuple is a new one).

The snapshots are taken on a thread of their own, never on the run's loop:
10,000 sockets took 0.4-1.6 s a snapshot on this 2-core machine (a JSON line
each), and on the loop that held back the heartbeats the actors and probes
wait for (they give up after 3 s). The thread spends its time in sock_diag
and orjson, so the loop still gets its turns.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import IO, Any

import orjson
from pyroute2 import netns

from bus.records import TCP_STATES
from probes.sockdiag import DiagQuery, SockDiag

SNAPSHOTS = "snapshots.jsonl"
SNAPSHOT_HZ = 4.0
ESTABLISHED = TCP_STATES.index("ESTABLISHED")
LISTEN = TCP_STATES.index("LISTEN")
HANDSHAKE = ("snd_mss", "rcv_mss", "advmss", "pmtu", "snd_wscale", "rcv_wscale", "options")
# tcp_info name -> snapshot name (units in the name where the kernel's are not obvious).
DYNAMIC = {
    "rtt": "rtt_us",
    "rttvar": "rttvar_us",
    "snd_cwnd": "cwnd",
    "snd_ssthresh": "ssthresh",
    "retransmits": "retransmits",
    "probes": "probes",
    "backoff": "backoff",
    "rcv_space": "rcv_space",
    "rwnd_limited": "rwnd_limited_us",
    "total_retrans": "total_retrans",
    "unacked": "unacked",
    "ca_state": "ca_state",
    "last_ack_recv": "last_ack_recv_ms",
}


def _ends(s: SockDiag) -> dict[str, Any]:
    return {
        "laddr": s.laddr,
        "lport": s.lport,
        "raddr": s.raddr,
        "rport": s.rport,
        "cookie": s.cookie,
    }


class Snapshotter:
    def __init__(self, namespaces: dict[str, str], ports: list[int], run_dir: Path) -> None:
        """`namespaces`: host -> network namespace name."""
        self.ports = ports
        self.queries: dict[str, DiagQuery] = {}
        for host, name in namespaces.items():
            # A netlink socket answers for the namespace it was made in.
            netns.pushns(name)
            try:
                self.queries[host] = DiagQuery()
            finally:
                netns.popns()
        self._out: IO[bytes] = open(run_dir / SNAPSHOTS, "ab")
        self.interval_ns = int(1e9 / SNAPSHOT_HZ)
        self.next_ns = 0
        self.samples = 0
        self.took_ns_max = 0
        self._seen: dict[tuple[str, int], dict[str, Any]] = {}  # live sockets, last sample
        self._established: set[tuple[str, int]] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: OSError | None = None

    def start(self) -> Snapshotter:
        """Snapshots every interval on their own thread, the first at once, until close()."""
        self._thread = threading.Thread(target=self._run, name="snapshots", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(max(0, self.next_ns - time.monotonic_ns()) / 1e9):
            try:
                self.snapshot()
            except OSError as e:
                self._error = e  # raised on the run's loop by check()
                return

    def check(self) -> None:
        """Raise, on the caller's thread, the error that stopped the snapshots."""
        if self._error is not None:
            error, self._error = self._error, None
            raise OSError(error.errno, f"socket snapshots stopped: {error.strerror or error}")

    def snapshot(self) -> None:
        t0 = time.monotonic_ns()
        self.next_ns = t0 + self.interval_ns
        lines: list[bytes] = []
        live: dict[tuple[str, int], dict[str, Any]] = {}
        for host, query in self.queries.items():
            for s in query.sockets(self.ports):
                if s.state == LISTEN or s.tcp_info is None:
                    continue
                key = (host, s.cookie)
                base = {"t_mono_ns": t0, "host": host, **_ends(s)}
                info = s.tcp_info
                if s.state == ESTABLISHED and key not in self._established:
                    self._established.add(key)
                    lines.append(
                        orjson.dumps(
                            {
                                "kind": "established",
                                **base,
                                **{k: getattr(info, k) for k in HANDSHAKE},
                                "congestion": s.congestion,
                            }
                        )
                    )
                sample = {
                    "kind": "sample",
                    **base,
                    "state": TCP_STATES[s.state],
                    "timer": s.timer,
                    "expires_ms": s.expires_ms,
                    "timer_retrans": s.retrans,
                    **{name: getattr(info, k) for k, name in DYNAMIC.items()},
                }
                live[key] = sample
                lines.append(orjson.dumps(sample))
        for key, last in self._seen.items():
            if key not in live:
                lines.append(
                    orjson.dumps(
                        {
                            **{
                                k: last[k]
                                for k in ("host", "laddr", "lport", "raddr", "rport", "cookie")
                            },
                            "kind": "gone",
                            "t_mono_ns": t0,
                            "last_seen_mono_ns": last["t_mono_ns"],
                            "last_state": last["state"],
                            "last_probes": last["probes"],
                            "last_timer": last["timer"],
                            "last_ack_mono_ns": last["t_mono_ns"]
                            - last["last_ack_recv_ms"] * 1_000_000,
                        }
                    )
                )
        self._seen = live
        self._out.write(b"".join(line + b"\n" for line in lines))
        self.samples += 1
        self.took_ns_max = max(self.took_ns_max, time.monotonic_ns() - t0)

    def describe(self) -> dict[str, Any]:
        return {
            "file": SNAPSHOTS,
            "hz": SNAPSHOT_HZ,
            "samples": self.samples,
            "took_ms_max": round(self.took_ns_max / 1e6, 3),
        }

    def close(self) -> None:
        if self._out.closed:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._out.close()
        for query in self.queries.values():
            query.close()
