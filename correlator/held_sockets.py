"""The sockets each process holds, and the most it held at once.

A process claims a life's socket by accept4 or by a connect/accept record
with an fd, and releases it by a close record with an fd or when the life
leaves the indexes; a life is held by one process at a time.
"""

from __future__ import annotations

import polars as pl

from correlator.lifecycles import Conn


class HeldSockets:
    def __init__(self) -> None:
        self.by_owner: dict[int, int] = {}
        self.by_owner_max: dict[int, int] = {}

    def own(self, pid: int, conn: Conn) -> None:
        if conn.held_by is not None:
            return
        conn.held_by = pid
        self.by_owner[pid] = self.by_owner.get(pid, 0) + 1
        if self.by_owner[pid] > self.by_owner_max.get(pid, 0):
            self.by_owner_max[pid] = self.by_owner[pid]

    def release(self, conn: Conn) -> None:
        if conn.held_by is not None:
            n = self.by_owner.get(conn.held_by, 0)
            self.by_owner[conn.held_by] = max(n - 1, 0)
            conn.held_by = None

    def replay(
        self,
        acts: pl.DataFrame,
        accs: pl.DataFrame,
        unindex: dict[int, int],
        conns: dict[int, Conn],
    ) -> None:
        """A chunk's claims and releases in position order, each life
        released before the fact at its unindex."""
        ev = pl.col("event")
        has_fd = pl.col("fd").is_not_null()
        ops = pl.concat(
            [
                accs.select("life", "pid", key=pl.col("pos") * 2, claim=pl.lit(True)),
                acts.filter(ev.is_in(["connect", "accept"]) & has_fd).select(
                    "life", "pid", key=pl.col("pos") * 2, claim=pl.lit(True)
                ),
                acts.filter((ev == "close") & has_fd).select(
                    "life", "pid", key=pl.col("pos") * 2, claim=pl.lit(False)
                ),
            ]
        ).sort("key")
        ends = sorted((2 * u - 1, life) for life, u in unindex.items())
        i = 0
        for life, pid, key, claim in ops.iter_rows():
            while i < len(ends) and ends[i][0] < key:
                c = conns.get(ends[i][1])
                if c is not None:
                    self.release(c)
                i += 1
            conn = conns.get(life)
            if conn is None:
                continue
            if claim:
                self.own(pid, conn)
            else:
                self.release(conn)
