"""tcplab's command line.

Stays thin: `run` hands a scenario to lab.run.LabRun and the recording to
reports.build_reports; `watch` and `doctor` come from probes.cli.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from lab.scenario import ScenarioError, available, find


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        raise click.ClickException(
            f"{what} needs root (sudo): the eBPF probes and the lab's network namespace need it"
        )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """A laboratory for kernel-level TCP investigation."""


@cli.command("list")
def list_scenarios() -> None:
    """Show the scenarios, one line each."""
    for s in available():
        click.echo(f"{s.name:<10} {s.summary}")


@cli.command()
@click.argument("scenario", nargs=-1, required=True)
@click.option("--runs-dir", type=click.Path(path_type=Path), default=Path("runs"),
              show_default=True, help="Where run directories are written.")
@click.option("--quiet", "view", flag_value="quiet", help="No live view.")
@click.option("--json", "view", flag_value="json", help="One JSON status line a second.")
def run(scenario: tuple[str, ...], runs_dir: Path, view: str | None) -> None:
    """Run SCENARIO (a name from `tcplab list`, a .toml path, or `all`)."""
    from lab.run import LabRun, RunOptions
    from reports import build_reports

    _need_root("tcplab run")
    try:
        chosen = available() if scenario == ("all",) else [find(s) for s in scenario]
    except ScenarioError as e:
        raise click.ClickException(str(e)) from None
    view = view or ("live" if sys.stderr.isatty() else "quiet")
    failed = []
    for s in chosen:
        lab = LabRun(s, RunOptions(runs_dir=runs_dir, view=view))
        try:
            run_dir = lab.execute()
            summary = build_reports(run_dir)
        except Exception as e:  # a run that breaks still leaves its directory
            click.echo(f"tcplab: {s.name}: {e} (see {lab.run_dir})", err=True)
            failed.append(s.name)
            continue
        _print_outcome(s.name, run_dir, summary, view)
        if lab.interrupted:
            break
    if failed:
        raise click.ClickException(f"runs that failed: {', '.join(failed)}")


def _print_outcome(name: str, run_dir: Path, summary: dict, view: str) -> None:  # type: ignore[type-arg]
    if view == "json":
        import json

        click.echo(json.dumps({"scenario": name, "run_dir": str(run_dir), "summary": summary}))
        return
    click.echo(f"\n== {name}: {run_dir}")
    for line in summary.get("diagnosis", []):
        click.echo(f"  {line}")
    click.echo(f"  report: {run_dir / 'report.html'}")


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def report(run_dir: Path) -> None:
    """Rebuild every output of RUN_DIR from its raw recording."""
    from correlator.errors import ReportError
    from reports import build_reports

    try:
        summary = build_reports(run_dir)
    except ReportError as e:
        raise click.ClickException(str(e)) from None
    _print_outcome(run_dir.name, run_dir, summary, "text")


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
