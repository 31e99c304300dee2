"""`tcplab doctor` and `tcplab watch` (bcc is imported lazily inside them)."""

from __future__ import annotations

import click


@click.command()
def doctor() -> None:
    """Check what this machine can trace and print the attach plan."""
    raise click.ClickException("doctor is not implemented yet")


@click.command()
def watch() -> None:
    """Run the probes alone against any process and print kernel events."""
    raise click.ClickException("watch is not implemented yet")
