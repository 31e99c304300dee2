"""connections.jsonl's lines from the lifecycles' frame
(correlator/connection_schema.py), encoded by polars, byte for byte what
json.JSONEncoder(separators=(",", ":")) writes for the row's dict.

Each line is put together from polars' JSON of the plain columns and the
nested ones rewritten to the row's shape ([addr, port], {event: n},
[[ts_ns, event], ...]). The few rows where polars' text could differ from
json's (non-ASCII, a float json would write with an exponent) are encoded
by json from their dicts instead.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import polars as pl

from correlator.connection_schema import CONNECTION_SCHEMA, rows_of_frame

# A two-host run's columns after the schema's (reports/snapshots.py): `host`
# and `peer_host` on every connection (not on listeners), `tcp_info` (JSON
# text) where a snapshot saw the handshake.
HOST_KEYS = ("host", "peer_host")
TCP_INFO = "tcp_info"

_json = json.JSONEncoder(separators=(",", ":"), default=str, check_circular=False).encode
_KEYS = list(CONNECTION_SCHEMA)


def _value(e: pl.Expr) -> pl.Expr:
    """The JSON text of one value (null included)."""
    return pl.struct(e.alias("v")).struct.json_encode().str.slice(5).str.strip_suffix("}")


def _members(names: list[str]) -> pl.Expr:
    """'"a":1,"b":"x"': the columns' JSON members, without the braces."""
    return pl.struct(names).struct.json_encode().str.slice(1).str.strip_suffix("}")


def app_object() -> pl.Expr:
    """`app` as the row's JSON object {event: n}, in order."""
    pair = pl.concat_str(
        _value(pl.element().struct.field("event")),
        pl.lit(":"),
        pl.element().struct.field("n").cast(pl.String),
    )
    inner = pl.col("app").list.eval(pair).list.join(",").fill_null("")
    return pl.concat_str(pl.lit("{"), inner, pl.lit("}"))


def _dest() -> pl.Expr:
    d = pl.col("dest")
    pair = pl.concat_str(
        pl.lit("["),
        _value(d.struct.field("addr")),
        pl.lit(","),
        _value(d.struct.field("port")),
        pl.lit("]"),
    )
    return pl.when(d.is_null()).then(pl.lit("null")).otherwise(pair)


def _actions() -> pl.Expr:
    pair = pl.concat_str(
        pl.lit("["),
        pl.element().struct.field("ts_ns").cast(pl.String),
        pl.lit(","),
        _value(pl.element().struct.field("event")),
        pl.lit("]"),
    )
    inner = pl.col("actions").list.eval(pair).list.join(",").fill_null("")
    return pl.concat_str(pl.lit("["), inner, pl.lit("]"))


def _extras(columns: list[str]) -> pl.Expr:
    out = pl.lit("")
    if all(k in columns for k in HOST_KEYS):
        hosts = pl.concat_str(pl.lit(","), _members(list(HOST_KEYS)))
        out = pl.when(pl.col("kind") == "connection").then(hosts).otherwise(pl.lit(""))
    if TCP_INFO in columns:
        info = pl.concat_str(pl.lit(',"tcp_info":'), pl.col(TCP_INFO)).fill_null("")
        out = pl.concat_str(out, info)
    return out


def _line(columns: list[str]) -> pl.Expr:
    a = _KEYS[: _KEYS.index("dest")]
    b = _KEYS[_KEYS.index("family") : _KEYS.index("app")]
    # The row has `timewait` only where it is true.
    middle = _members(b).str.replace_all(',"timewait":null', "", literal=True)
    return pl.concat_str(
        pl.lit("{"),
        _members(a),
        pl.lit(',"dest":'),
        _dest(),
        pl.lit(","),
        middle,
        pl.lit(',"app":'),
        app_object(),
        pl.lit(',"actions":'),
        _actions(),
        pl.lit(","),
        _members(["phase"]),
        _extras(columns),
        pl.lit("}"),
    )


def _odd(line: pl.Expr) -> pl.Expr:
    """Where polars' text differs from json's: non-ASCII and DEL (json
    escapes them), a float json writes with an exponent (below 1e-4, from
    1e16). Control characters both escape alike (tests/test_connection_lines.py)."""
    return line.str.contains(r"[^\x00-\x7e]") | _far_float()


def _far_float() -> pl.Expr:
    t = pl.col("t_start").abs()
    return ((t != 0) & ((t < 1e-4) | (t >= 1e16))).fill_null(False)


def connection_lines(frame: pl.DataFrame) -> bytes:
    """The lifecycles' lines, each ending in a newline."""
    if not len(frame):
        return b""
    line = _line(frame.columns)
    blob = frame.select(line.str.join("\n").cast(pl.Binary)).item() + b"\n"  # no str between
    # Checked on the whole text first: odd rows are rare.
    far = frame.select(_far_float().any()).item()
    if blob.isascii() and b"\x7f" not in blob and not far:
        return blob
    enc = frame.select(line=line, odd=_odd(line))
    lines = [x.encode() for x in enc["line"].to_list()]
    odd = enc["odd"].arg_true().to_list()
    for i, row in zip(odd, dict_rows(frame[odd]), strict=True):
        lines[i] = _json(row).encode()
    return b"\n".join(lines) + b"\n"


def dict_rows(frame: pl.DataFrame) -> list[dict[str, Any]]:
    """The lifecycles as connections.jsonl's dicts, a two-host run's keys too."""
    rows = rows_of_frame(frame)
    cols = frame.columns
    hosts = frame.select(HOST_KEYS).rows() if all(k in cols for k in HOST_KEYS) else None
    infos = frame[TCP_INFO].to_list() if TCP_INFO in cols else None
    for i, row in enumerate(rows):
        if hosts is not None and row["kind"] == "connection":
            row["host"], row["peer_host"] = hosts[i]
        if infos is not None and infos[i] is not None:
            row[TCP_INFO] = orjson.loads(infos[i])
    return rows
