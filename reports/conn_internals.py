"""Each connection's TCP internals in connections.jsonl and connections.parquet.

The connections are written as they finish, the internals are known once the
recording is read (correlator/conn_internals.py joins them on the written
rows). A run with the internals probes then gets both files rewritten once:
in connections.jsonl an `internals` object on the rows that have any, the
other lines byte for byte as they were; in connections.parquet the
`internals_*` columns (null in every other run) filled. Streamed both ways:
memory stays bounded by the internals table, never by the connections.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import polars as pl

from correlator.conn_internals import FIELDS, per_connection
from correlator.internals import Internals
from reports.tables import CONNECTIONS_SCHEMA
from reports.tables import INTERNALS_PREFIX as PREFIX
from reports.writers import dumps


def add_internals(run_dir: Path, internals: Internals) -> int:
    """Rewrite both files with the internals columns; the connections that got any."""
    samples, events = internals.records()
    if samples is None and events is None:
        return 0
    jsonl = Path(run_dir) / "connections.jsonl"
    parquet = Path(run_dir) / "connections.parquet"
    keys = pl.scan_parquet(parquet).select("id", "laddr", "lport", "raddr", "rport", "start_ns")
    table = per_connection(samples, events, keys.collect())
    if not len(table):
        return 0
    by_id = {
        row["id"]: {k: v for k, v in row.items() if k != "id" and v is not None}
        for row in table.iter_rows(named=True)
    }
    tmp = jsonl.with_name(jsonl.name + ".tmp")
    with open(jsonl, "rb") as src, open(tmp, "wb") as out:
        for line in src:
            row = orjson.loads(line)
            extra = by_id.get(row.get("id"))
            if extra is None:
                out.write(line)
            else:
                row["internals"] = extra
                out.write(dumps(row) + b"\n")
    tmp.replace(jsonl)
    cols = [PREFIX + k for k in FIELDS]
    renamed = table.rename({k: PREFIX + k for k in FIELDS})
    tmp = parquet.with_name(parquet.name + ".tmp")
    (
        pl.scan_parquet(parquet)
        .drop(cols, strict=False)
        .join(renamed.lazy(), on="id", how="left", maintain_order="left")
        .select(list(CONNECTIONS_SCHEMA))
        .sink_parquet(tmp)
    )
    tmp.replace(parquet)
    return len(table)
