"""trace.json's lines for a chunk of lifecycles (correlator/connection_schema.py),
put together by polars: one thread_name ("M") line per connection, then a
complete ("X") slice per state, byte for byte what json writes for each
event's dict (reports/writers.py TraceWriter says what they hold).

Times are µs with up to three decimals, ns / 1000 as json writes that float:
written from the integer ns (whole part, ".", the ns digits without trailing
zeros, "0" if none), which is the float's shortest text while it has at most
15 digits. Strings go in quoted as they are when they hold nothing json
escapes. A line with any other value (a string to escape, a time too far
from the start) is made from its dict by the caller's encoder instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import polars as pl

# |ns| below this: at most 11 + 3 digits, the float's text is exact (and
# json writes no exponent). Runs are hours long: 1e14 ns is 27 hours.
_EXACT_NS = 10**14
# Text json writes as it is between quotes: printable ASCII but " and \.
_PLAIN = r"^[ !#-\[\]-~]*$"
TIMEWAIT = " (timewait socket)"


def _us(ns: pl.Expr) -> pl.Expr:
    """The JSON text of ns / 1000 (µs), for |ns| < _EXACT_NS."""
    a = ns.abs()
    frac = (a % 1000).cast(pl.String).str.zfill(3).str.strip_chars_end("0")
    return pl.concat_str(
        pl.when(ns < 0).then(pl.lit("-")).otherwise(pl.lit("")),
        (a // 1000).cast(pl.String),
        pl.lit("."),
        pl.when(frac == "").then(pl.lit("0")).otherwise(frac),
    )


def _text(e: pl.Expr) -> pl.Expr:
    """str(value) as an f-string writes it: None for a null."""
    return e.cast(pl.String).fill_null("None")


def _json_str(e: pl.Expr) -> pl.Expr:
    """The JSON text of a plain string column (null as null)."""
    return pl.concat_str(pl.lit('"'), e, pl.lit('"')).fill_null("null")


def _plain(e: pl.Expr) -> pl.Expr:
    return e.is_null() | e.str.contains(_PLAIN)


def _label() -> pl.Expr:
    """`#id listen laddr:lport`, `#id laddr:lport -> raddr:rport` or
    `#id (no port) -> addr:port` (the connect's destination, ? if none),
    then ` [outcome]`."""
    tid = pl.col("tid").cast(pl.String)
    no_dest = pl.col("dest_addr").is_null()
    label = (
        pl.when(pl.col("kind") == "listener")
        .then(pl.concat_str(pl.lit("#"), tid, pl.lit(" listen "), _text(pl.col("laddr")),
                            pl.lit(":"), _text(pl.col("lport"))))
        .when(pl.col("lport").is_not_null() & (pl.col("lport") != 0))
        .then(pl.concat_str(pl.lit("#"), tid, pl.lit(" "), _text(pl.col("laddr")), pl.lit(":"),
                            _text(pl.col("lport")), pl.lit(" -> "), _text(pl.col("raddr")),
                            pl.lit(":"), _text(pl.col("rport"))))
        .otherwise(pl.concat_str(
            pl.lit("#"), tid, pl.lit(" (no port) -> "),
            pl.when(no_dest).then(pl.lit("?")).otherwise(_text(pl.col("dest_addr"))),
            pl.lit(":"),
            pl.when(no_dest).then(pl.lit("?")).otherwise(_text(pl.col("dest_port"))),
        ))
    )  # fmt: skip
    return pl.concat_str(label, pl.lit(" ["), _text(pl.col("outcome")), pl.lit("]"))


def trace_lines(
    frame: pl.DataFrame, t0_ns: int, encode: Callable[[dict[str, Any]], bytes]
) -> tuple[pl.Series, list[tuple[int, str | None]]]:
    """The chunk's trace lines in order, and its processes (pid, actor) in
    order of first appearance. `encode` makes the lines polars cannot (their dicts)."""
    flat = frame.select(
        pl.int_range(pl.len(), dtype=pl.Int64).alias("ci"),
        pl.col("owner").struct.field("pid").fill_null(0).alias("pid"),
        pl.col("id").alias("tid"),
        pl.col("owner").struct.field("actor").alias("actor"),
        "kind", "laddr", "lport", "raddr", "rport", "outcome", "states",
        dest_addr=pl.col("dest").struct.field("addr"),
        dest_port=pl.col("dest").struct.field("port"),
    ).with_columns(name=_label())  # fmt: skip
    meta = flat.select(
        "ci",
        pl.lit(-1, dtype=pl.Int64).alias("k"),
        pl.concat_str(
            pl.lit('{"ph":"M","name":"thread_name","pid":'), pl.col("pid").cast(pl.String),
            pl.lit(',"tid":'), pl.col("tid").cast(pl.String),
            pl.lit(',"args":{"name":'), _json_str(pl.col("name")), pl.lit("}}"),
        ).alias("line"),
        (~_plain(pl.col("name"))).alias("odd"),
        "pid", "tid", "name",
    )  # fmt: skip
    meta = _fix(meta, encode, lambda pid, tid, name: {
        "ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": name},
    })  # fmt: skip
    st = (
        flat.select("ci", "pid", "tid", "outcome", "states")
        .explode("states")
        .unnest("states")
        .drop_nulls("state")
        .with_row_index("k")
        .with_columns(
            pl.col("k").cast(pl.Int64),
            name=pl.when(pl.col("timewait"))
            .then(pl.col("state") + TIMEWAIT)
            .otherwise(pl.col("state")),
            since=pl.col("start_ns") - t0_ns,
        )
    )
    slices = st.select(
        "ci",
        "k",
        pl.concat_str(
            pl.lit('{"ph":"X","cat":"tcp","pid":'), pl.col("pid").cast(pl.String),
            pl.lit(',"tid":'), pl.col("tid").cast(pl.String),
            pl.lit(',"name":'), _json_str(pl.col("name")),
            pl.lit(',"ts":'), _us(pl.col("since")),
            pl.lit(',"dur":'), _us(pl.col("dur_ns")),
            pl.lit(',"args":{"cpu_pid":'), pl.col("cpu_pid").cast(pl.String).fill_null("null"),
            pl.lit(',"outcome":'), _json_str(pl.col("outcome")), pl.lit("}}"),
        ).alias("line"),
        (
            ~_plain(pl.col("name"))
            | ~_plain(pl.col("outcome"))
            | (pl.col("since").abs() >= _EXACT_NS)
            | (pl.col("dur_ns").abs() >= _EXACT_NS)
        ).alias("odd"),
        "pid", "tid", "name", "since", "dur_ns", "cpu_pid", "outcome",
    )  # fmt: skip
    slices = _fix(slices, encode, lambda pid, tid, name, since, dur, cpu_pid, outcome: {
        "ph": "X", "cat": "tcp", "pid": pid, "tid": tid, "name": name,
        "ts": us_round(since), "dur": us_round(dur),
        "args": {"cpu_pid": cpu_pid, "outcome": outcome},
    })  # fmt: skip
    lines = pl.concat([meta, slices]).sort("ci", "k")["line"]
    tracks = flat.select("pid", "actor").unique("pid", keep="first", maintain_order=True)
    return lines, tracks.rows()


def _fix(
    part: pl.DataFrame,
    encode: Callable[[dict[str, Any]], bytes],
    event: Callable[..., dict[str, Any]],
) -> pl.DataFrame:
    """The part's (ci, k, line), the lines marked odd made from their dicts."""
    odd = part.with_row_index("i").filter(pl.col("odd"))
    lines = part["line"]
    if len(odd):
        values = odd.drop("i", "ci", "k", "line", "odd").iter_rows()
        fixed = pl.Series([encode(event(*v)).decode() for v in values], dtype=pl.String)
        lines = lines.scatter(odd["i"].to_list(), fixed)
    return part.select("ci", "k").with_columns(lines)


def us_round(ns: int) -> float:
    """round(ns / 1000, 3), skipping round() where it cannot change the value
    (a whole number of ns in µs is exact to the ns below 2**42 µs)."""
    if -(10**15) < ns < 10**15:
        return ns / 1000
    return round(ns / 1000, 3)
