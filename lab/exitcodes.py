"""tcplab's exit codes, defined once: the README lists them, `tcplab run`,
`tcplab report` and `make lab` exit with them (several runs: the worst).

A larger number is worse, so the worst of several runs is their max().
"""

from __future__ import annotations

import os
from enum import IntEnum
from typing import Any

import click


class Exit(IntEnum):
    OK = 0  # every expectation held
    EXPECTATION_FAILED = 1  # the run was whole, but an expectation did not hold
    USAGE = 2  # a bad command line, scenario file or run directory; nothing ran
    CRASHED = 3  # an actor or the probes crashed, the kernel view was lost, or the run broke
    INTERRUPTED = 130  # Ctrl-C or SIGTERM (128 + SIGINT, as shells report it)


def run_exit(meta: dict[str, Any], summary: dict[str, Any] | None) -> Exit:
    """The exit code one run earns, from its run.json and its summary (None:
    no summary could be built)."""
    if meta.get("interrupted"):
        return Exit.INTERRUPTED
    if meta.get("failed") or summary is None:
        return Exit.CRASHED
    if any(a.get("crashed") for a in meta.get("actors", {}).values()):
        return Exit.CRASHED
    if any(e.get("held") is not True for e in summary.get("expectations", [])):
        return Exit.EXPECTATION_FAILED
    return Exit.OK


class CommandError(click.ClickException):
    """One line on stderr and exit code 2 (click's own is 1: "an
    expectation failed" here)."""

    exit_code = int(Exit.USAGE)


def need_root(what: str, why: str) -> None:
    """As non-root, one line that says what to do, instead of a traceback."""
    if os.geteuid() != 0:
        raise CommandError(f"{what} needs root: run `sudo {what}` ({why})")
