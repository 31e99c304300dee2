"""Summary figures from a two-host run's snapshots.jsonl (lab/snapshots.py).

Two groups of counts for the expectations, and the sentences that explain
them:
- `tcp_info.<path>`: what the handshakes negotiated, per path — `link`
  (an address on the lab link) or `loopback` — as the smallest value over
  the path's sockets (snd_mss, rcv_mss, advmss, pmtu, snd_wscale,
  rcv_wscale), the number of sockets with each option, and `connections`.
- `keepalive`: `max_probes` (the highest tcpi_probes seen), `gave_up`
  (sockets that disappeared while keepalive probes were unanswered),
  `give_up_s` (the longest time from such a socket's last ACK to its end),
  `ghosts` (the far ends of those sockets, on the other host, still
  ESTABLISHED after the give-up: nothing told them the connection is gone).
A run without snapshots.jsonl has no such counts and no sentences.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import polars as pl

from lab.snapshots import HANDSHAKE, SNAPSHOT_HZ, SNAPSHOTS
from reports.writers import RunSink, TraceWriter, dumps

SIZES = ("snd_mss", "rcv_mss", "advmss", "pmtu", "snd_wscale", "rcv_wscale")
OPTIONS = ("timestamps", "sack", "wscale", "ecn")
SNAPSHOT_INTERVAL_NS = int(1e9 / SNAPSHOT_HZ)


def _path(row: dict[str, Any]) -> str:
    return "loopback" if ipaddress.ip_address(row["laddr"]).is_loopback else "link"


def read(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / SNAPSHOTS
    if not path.exists():
        return []
    rows = []
    with open(path, "rb") as f:
        for line in f:
            try:
                rows.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue  # a run cut short may end in half a line
    return rows


def handshakes(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    by_path: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row.get("kind") == "established":
            by_path[_path(row)].append(row)
    out: dict[str, dict[str, Any]] = {}
    for path, conns in sorted(by_path.items()):
        figures: dict[str, Any] = {"connections": len(conns)}
        for key in SIZES:
            figures[key] = min(int(c[key]) for c in conns)
        for opt in OPTIONS:
            figures[opt] = sum(1 for c in conns if opt in c.get("options", []))
        congestion = sorted({str(c.get("congestion")) for c in conns})
        figures["congestion"] = ",".join(congestion)  # text: shown, not compared
        out[path] = figures
    return out


def keepalive(rows: list[dict[str, Any]]) -> dict[str, Any]:
    max_probes = 0
    keepalive_sockets: set[tuple[str, int]] = set()
    last: dict[tuple[str, int], dict[str, Any]] = {}
    gave_up: list[float] = []
    ended: list[dict[str, Any]] = []
    for row in rows:
        key = (row["host"], row["cookie"])
        if row.get("kind") == "sample":
            last[key] = row
            if row.get("timer") == "keepalive":
                keepalive_sockets.add(key)
            if key in keepalive_sockets:
                max_probes = max(max_probes, int(row.get("probes", 0)))
        elif row.get("kind") == "gone":
            last.pop(key, None)
            if key in keepalive_sockets and row.get("last_probes", 0) > 0:
                gave_up.append((row["t_mono_ns"] - row["last_ack_mono_ns"]) / 1e9)
                ended.append(row)
    return {
        "sockets": len(keepalive_sockets),
        "max_probes": max_probes,
        "gave_up": len(gave_up),
        "give_up_s": round(max(gave_up), 2) if gave_up else 0,
        "ghosts": sum(1 for g in ended if _ghost(rows, g)),
    }


def _ghost(rows: list[dict[str, Any]], gone: dict[str, Any]) -> bool:
    """The far end of a socket that gave up was still ESTABLISHED afterwards."""
    for row in rows:
        if (
            row.get("kind") == "sample"
            and row["t_mono_ns"] >= gone["t_mono_ns"]
            and row["host"] != gone["host"]
            and (row["laddr"], row["lport"], row["raddr"], row["rport"])
            == (gone["raddr"], gone["rport"], gone["laddr"], gone["lport"])
        ):
            return bool(row["state"] == "ESTABLISHED")
    return False


def snapshot_counts(run_dir: Path) -> dict[str, Any]:
    """Counts for summary["counts"]; {} when the run took no snapshots."""
    rows = read(run_dir)
    if not rows:
        return {}
    return {"tcp_info": handshakes(rows), "keepalive": keepalive(rows)}


class LinkSink(RunSink):
    """A two-host run's sink: each connections.jsonl row also says where its
    socket lives (`host`: the owning actor's host, else the snapshot's),
    where its peer lives (`peer_host`), and what its handshake negotiated
    (`tcp_info`: snd_mss, rcv_mss, advmss, pmtu, window scales, options,
    congestion — from the socket's "established" snapshot, when a snapshot
    saw it: a connection shorter than a snapshot interval has none)."""

    def __init__(self, run_dir: Path, trace: TraceWriter, meta: dict[str, Any]) -> None:
        super().__init__(run_dir, trace)
        lab = meta.get("lab") or {}
        self.actor_host: dict[str, str] = dict(lab.get("actors") or {})
        addresses = (lab.get("link") or {}).get("addresses") or {}
        self.addr_host = {addr: host for host, addr in addresses.items()}
        self.established: dict[tuple[str, int, str, int], list[dict[str, Any]]] = defaultdict(list)
        for row in read(run_dir):
            if row.get("kind") == "established":
                key = (row["laddr"], row["lport"], row["raddr"], row["rport"])
                self.established[key].append(row)

    def _snapshot(
        self, key: tuple[str, int, str, int], start_ns: int | None, end: int | None
    ) -> dict[str, Any] | None:
        # A snapshot's time is taken as its query starts: a socket made while
        # the query ran is seen with a time a little before its first state.
        start = (start_ns or 0) - SNAPSHOT_INTERVAL_NS
        for snap in self.established.get(key, []):
            if start <= snap["t_mono_ns"] and (end is None or snap["t_mono_ns"] <= end):
                return snap
        return None

    def connections(self, frame: pl.DataFrame) -> None:
        hosts: list[str | None] = []
        peers: list[str | None] = []
        infos: list[str | None] = []
        cols = frame.select(
            "kind",
            "laddr",
            "lport",
            "raddr",
            "rport",
            "start_ns",
            "end_ns",
            actor=pl.col("owner").struct.field("actor"),
        )
        for kind, laddr, lport, raddr, rport, start_ns, end_ns, owner in cols.iter_rows():
            if kind != "connection":
                hosts.append(None)
                peers.append(None)
                infos.append(None)
                continue
            snap = self._snapshot(
                (str(laddr), int(lport or 0), str(raddr), int(rport or 0)), start_ns, end_ns
            )
            host = (self.actor_host.get(owner) if owner else None) or (
                snap["host"] if snap else None
            )
            loopback = isinstance(raddr, str) and ipaddress.ip_address(raddr).is_loopback
            hosts.append(host)
            peers.append(host if loopback else self.addr_host.get(str(raddr)))
            infos.append(
                None
                if snap is None
                else dumps({k: snap[k] for k in (*HANDSHAKE, "congestion")}).decode()
            )
        super().connections(
            frame.with_columns(
                pl.Series("host", hosts, dtype=pl.String),
                pl.Series("peer_host", peers, dtype=pl.String),
                pl.Series("tcp_info", infos, dtype=pl.String),
            )
        )


def sentences(counts: dict[str, Any]) -> list[str]:
    out = []
    for path, f in counts.get("tcp_info", {}).items():
        opts = [o for o in OPTIONS if f[o]] or ["none"]
        where = "across the lab link" if path == "link" else "on loopback"
        ts = f["timestamps"] == f["connections"]
        out.append(
            f"Handshake {where}: {f['connections']} socket(s) settled an MSS of {f['advmss']} "
            f"bytes (path MTU {f['pmtu']}; the SYN offers {f['advmss'] + 12 if ts else f['advmss']}"
            f"{', 12 of which the timestamp option takes back from every segment' if ts else ''}),"
            f" window scale {f['snd_wscale']}/{f['rcv_wscale']}, options {', '.join(opts)}, "
            f"congestion control {f['congestion']}."
        )
    k = counts.get("keepalive", {})
    if k.get("gave_up"):
        out.append(
            f"Keepalive: the peer went silent; the kernel probed up to {k['max_probes']} times, "
            f"then gave up {k['give_up_s']:.1f} s after the last ACK, reset the connection and "
            "reported ETIMEDOUT to the application."
        )
    if k.get("ghosts"):
        out.append(
            f"{k['ghosts']} socket(s) on the other side still said ESTABLISHED afterwards: "
            "nothing told them the connection is gone. Without keepalive such a ghost socket "
            "would hold its memory and file descriptor for as long as its process lives."
        )
    return out
