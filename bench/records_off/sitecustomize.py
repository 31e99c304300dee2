"""Bench only: put this directory on PYTHONPATH and every Python process
started with it drops the actors' per-connection records at the source.

bench/lab_overhead.py (the `lab_records` row) runs the lab bomb with it, to
measure what those records cost against the same lab with them. Nothing in
the product imports this.
"""

from bus import logging as buslog


def _dropped(*_args: object, **_fields: object) -> None:
    return None


buslog.SocketLog.__call__ = _dropped  # type: ignore[method-assign]
buslog.SocketLog.conn = _dropped  # type: ignore[method-assign]
