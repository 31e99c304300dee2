"""A foreign program's output lines as application records.

A program that does not speak the bus still logs: Go's log/slog JSON,
structlog's JSONRenderer, or any JSON object per line, and plain text.
Each line becomes one AppRecord (bus/records.py): a JSON object keeps its
keys (its message as `event`, its level lowercased), any other line is kept
whole as `text` under the event "line". Both are stamped with the monotonic
clock when the line arrived, which joins them to the kernel's events.

An error the program printed as text ("connect: cannot assign requested
address") is named the way the kernel's side names it (EADDRNOTAVAIL), so
the summary counts it with the failures the probes saw.
"""

from __future__ import annotations

import errno
import json
import os
import re
import time
from typing import Any

# The keys the record itself sets: a program's own key of that name is kept
# as app_<key>.
OWN_KEYS = ("event", "actor", "pid", "mono_ns", "wall", "level", "stream")
# Where each convention puts the message and the level.
MESSAGE_KEYS = ("msg", "event", "message")
ERROR_KEYS = ("error", "err")
# Keys whose type the bus checks (AppRecord): a value of another type is kept
# as app_<key> instead of failing the whole batch.
INT_KEYS = {"fd": -1, "lport": 0, "rport": 0, "errno": 0, "open_fds": 0}  # key -> lowest
STR_KEYS = ("laddr", "raddr")
MAX_LINE = 64 * 1024  # a longer line is cut: one record, not a memory sink
INT64 = 2**63

# strerror text -> errno name, longest first ("Connection reset by peer"
# must not match as a shorter message); compared case-insensitively, as Go
# lowercases them ("cannot assign requested address").
_STRERRORS = sorted(
    (
        (os.strerror(n).lower(), name)
        for n, name in errno.errorcode.items()
        if not os.strerror(n).startswith("Unknown error")
    ),
    key=lambda t: -len(t[0]),
)
_ERROR_TEXT = re.compile("|".join(re.escape(t) for t, _ in _STRERRORS))
_BY_TEXT = dict(_STRERRORS)


def errno_in(text: str) -> str | None:
    """The errno name whose message `text` contains, e.g. EMFILE for
    'accept4: too many open files'; None when it names none."""
    m = _ERROR_TEXT.search(text.lower())
    return _BY_TEXT[m.group(0)] if m else None


def _plain(value: Any) -> Any:
    """JSON values the bus can carry (msgpack has no integers past 64 bits)."""
    if isinstance(value, bool) or value is None or isinstance(value, float | str):
        return value
    if isinstance(value, int):
        return value if -INT64 <= value < INT64 else str(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def _typed_ok(key: str, value: Any) -> bool:
    if key in INT_KEYS:
        return type(value) is int and INT_KEYS[key] <= value < INT64
    if key in STR_KEYS:
        return isinstance(value, str)
    return True


def to_record(line: bytes, stream: str, actor: str, pid: int, mono_ns: int) -> dict[str, Any]:
    """One output line (without its newline) as an AppRecord."""
    text = line[:MAX_LINE].decode("utf-8", "replace").rstrip("\r")
    fields: dict[str, Any] = {}
    try:
        parsed = json.loads(text) if text.startswith("{") else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        event = next(
            (parsed.pop(k) for k in MESSAGE_KEYS if isinstance(parsed.get(k), str)), "line"
        )
        level = parsed.pop("level", "info")
        for key, value in parsed.items():
            key = str(key)
            value = _plain(value)
            if key in OWN_KEYS or not _typed_ok(key, value):
                key = f"app_{key}"
            fields[key] = value
        found = next((errno_in(v) for k in ERROR_KEYS if isinstance(v := fields.get(k), str)), None)
        if "error" in fields:
            # `error` is an errno name in every record on the bus; the
            # program's sentence is kept whole beside it.
            fields["error_text"] = fields.pop("error")
    else:
        event, level = "line", "error" if stream == "stderr" else "info"
        fields["text"] = text
        found = errno_in(text)
    if found is not None:
        fields["error"] = found
        fields.setdefault("errno", getattr(errno, found))
    return {
        **fields,
        "event": str(event),
        "actor": actor,
        "pid": pid,
        "mono_ns": mono_ns,
        "wall": time.time(),
        "level": str(level).lower(),
        "stream": stream,
    }
