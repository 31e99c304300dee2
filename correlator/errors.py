"""The failures a user of `tcplab report` can meet, one type each.

All derive from ReportError so the CLI catches one type and prints the
one-line message, which always says what to do next.
"""

from __future__ import annotations


class ReportError(Exception):
    """Base of every user-facing failure of the correlator and the report writers."""


class NoRecordingError(ReportError):
    """The run directory is missing or holds no recording.msgpack."""


class RunMetaError(ReportError):
    """run.json exists but cannot be read as the run's metadata."""


class ExpectationError(ReportError):
    """A scenario's "expected" entry is not in the expectation mini-language."""
