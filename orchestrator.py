"""tcplab's command line and run loop.

Stays thin: it composes bus/, probes/, actors/, correlator/ and reports/.
"""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """A laboratory for kernel-level TCP investigation."""


def _add_probe_commands() -> None:
    # probes/cli.py imports bcc lazily, so `tcplab --help` works without it.
    from probes.cli import doctor, watch

    cli.add_command(doctor)
    cli.add_command(watch)


def main(argv: list[str] | None = None) -> int:
    _add_probe_commands()
    try:
        cli.main(args=argv, prog_name="tcplab", standalone_mode=True)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
