"""tcplab's command line.

Stays thin: `run` hands a scenario to lab.run.LabRun and the recording to
reports.build_reports; `watch` and `doctor` come from probes.cli. Every
command ends with an exit code from lab.exitcodes.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from lab.exitcodes import CommandError, Exit, need_root, run_exit
from lab.scenario import Scenario, ScenarioError, available, find

ROOT_WHY = "the eBPF probes and the lab's network namespace need it"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """A laboratory for kernel-level TCP investigation."""


@cli.command("list")
def list_scenarios() -> None:
    """Show the scenarios, one line each."""
    try:
        scenarios = available()
    except ScenarioError as e:
        raise CommandError(str(e)) from None
    for s in scenarios:
        click.echo(f"{s.name:<10} {s.summary}")


@cli.command()
@click.argument("scenario", nargs=-1, required=True)
@click.option(
    "--runs-dir",
    type=click.Path(path_type=Path),
    default=Path("runs"),
    show_default=True,
    help="Where run directories are written.",
)
@click.option("--quiet", "view", flag_value="quiet", help="No live view.")
@click.option("--json", "view", flag_value="json", help="One JSON status line a second.")
@click.pass_context
def run(ctx: click.Context, scenario: tuple[str, ...], runs_dir: Path, view: str | None) -> None:
    """Run SCENARIO (a name from `tcplab list`, a .toml path, or `all`).

    Exits with the worst code of its runs (see the README's exit codes)."""
    need_root("tcplab run", ROOT_WHY)
    try:
        chosen = available() if scenario == ("all",) else [find(s) for s in scenario]
    except ScenarioError as e:
        raise CommandError(str(e)) from None
    view = view or ("live" if sys.stderr.isatty() else "quiet")
    try:
        worst = _run_each(chosen, runs_dir, view)
    except KeyboardInterrupt:  # between runs: each run handles its own
        click.echo("tcplab: interrupted between runs", err=True)
        worst = Exit.INTERRUPTED
    ctx.exit(int(worst))


def _run_each(chosen: list[Scenario], runs_dir: Path, view: str) -> Exit:
    from lab.run import LabRun, RunOptions
    from lab.shaping import ShapingError

    worst = Exit.OK
    for s in chosen:
        lab = LabRun(s, RunOptions(runs_dir=runs_dir, view=view))
        try:
            run_dir = lab.execute()
        except ShapingError as e:  # the kernel cannot shape as asked: nothing was made
            click.echo(f"tcplab: {s.name}: {e}", err=True)
            worst = max(worst, Exit.USAGE)
            continue
        except OSError as e:  # not even a run directory could be made: nothing ran
            click.echo(
                f"tcplab: {s.name}: cannot make a run directory in {runs_dir}: "
                f"{e.strerror or e}; give --runs-dir a directory you can write",
                err=True,
            )
            worst = max(worst, Exit.USAGE)
            continue
        if lab.teardown_errors:
            click.echo(f"tcplab: {s.name}: teardown: {'; '.join(lab.teardown_errors)}", err=True)
        lab.view.note("building report…")
        try:
            summary = _build(run_dir, s.name)
        except KeyboardInterrupt:
            # The run itself is complete: only its outputs are missing.
            click.echo(
                f"tcplab: {s.name}: interrupted while building the report; "
                f"`tcplab report {run_dir}` builds it",
                err=True,
            )
            return Exit.INTERRUPTED
        meta = lab.meta()
        code = run_exit(meta, summary)
        _print_outcome(s.name, run_dir, meta, summary, view, code)
        worst = max(worst, code)
        if lab.interrupted:
            break
    return worst


def _build(run_dir: Path, name: str) -> dict[str, Any] | None:
    """The run's summary, or None with one line saying why there is none."""
    from correlator.errors import ReportError
    from reports import build_reports

    try:
        return build_reports(run_dir)
    except (ReportError, OSError) as e:
        click.echo(f"tcplab: {name}: no report: {e}", err=True)
        return None


def _print_outcome(
    name: str,
    run_dir: Path,
    meta: dict[str, Any],
    summary: dict[str, Any] | None,
    view: str,
    code: Exit,
) -> None:
    crashed = {n: a for n, a in meta.get("actors", {}).items() if a.get("crashed")}
    if view == "json":
        click.echo(
            json.dumps(
                {
                    "scenario": name,
                    "run_dir": str(run_dir),
                    "exit_code": int(code),
                    "errors": meta.get("errors", []),
                    "summary": summary,
                },
                default=str,
            )
        )
        return
    click.echo(f"\n== {name}: {run_dir}")
    for line in (summary or {}).get("diagnosis", []):
        click.echo(f"  {line}")
    for error in meta.get("errors", []):
        click.echo(f"  ! {error}")
    for actor, a in crashed.items():
        click.echo(f"  ! {actor} exited with code {a['exit_code']}; the end of its log:")
        for line in a.get("last_lines", []):
            click.echo(f"      {line}")
    click.echo(f"  exit code {int(code)} ({code.name.lower().replace('_', ' ')})")
    if summary is not None:
        click.echo(f"  report: {run_dir / 'report.html'}")


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option(
    "-p",
    "--pid",
    type=int,
    default=None,
    help="Attach to this running process (and its children) instead.",
)
@click.option(
    "--duration",
    type=float,
    default=None,
    help="Stop after S seconds (default: when the program ends, or Ctrl-C).",
)
@click.option(
    "--port",
    "ports",
    type=int,
    multiple=True,
    help="Also trace every socket on this port (the program's listening ports "
    "are found by themselves).",
)
@click.option(
    "--stop-signal",
    default="SIGINT",
    show_default=True,
    help="What the program gets when the trace stops it.",
)
@click.option(
    "--runs-dir",
    type=click.Path(path_type=Path),
    default=Path("runs"),
    show_default=True,
    help="Where run directories are written.",
)
@click.option("--quiet", "view", flag_value="quiet", help="No live view.")
@click.option("--json", "view", flag_value="json", help="One JSON status line a second.")
@click.pass_context
def trace(
    ctx: click.Context,
    command: tuple[str, ...],
    pid: int | None,
    duration: float | None,
    ports: tuple[int, ...],
    stop_signal: str,
    runs_dir: Path,
    view: str | None,
) -> None:
    """Trace COMMAND (after --) or a running process (-p PID) like strace -f.

    Writes the same run directory as `tcplab run` when the program ends, at
    --duration, or on Ctrl-C (a normal end: exit 0). Its output lines become
    records (JSON lines parsed)."""
    import shutil

    from lab import proctree
    from lab.run import RunOptions
    from lab.scenario import MAX_PHASE_S
    from lab.trace import STOP_SIGNALS, TraceRun, trace_scenario

    need_root("tcplab trace", "the eBPF probes need it")
    if bool(command) == (pid is not None):
        raise CommandError("give a command after -- (tcplab trace -- ./server) or -p PID, not both")
    if pid is not None and not proctree.alive(pid):
        raise CommandError(f"no process {pid}: give the pid of a running process")
    if command and shutil.which(command[0]) is None:
        raise CommandError(f"cannot run {command[0]}: not found or not executable")
    if duration is not None and not 0 < duration <= MAX_PHASE_S:
        raise CommandError(
            f"--duration {duration:g}: give seconds above 0, at most {MAX_PHASE_S:g}"
        )
    if stop_signal not in STOP_SIGNALS:
        raise CommandError(f"--stop-signal {stop_signal}: give one of {', '.join(STOP_SIGNALS)}")
    if not all(0 < p < 65536 for p in ports):
        raise CommandError("--port: give ports from 1 to 65535")
    argv = (
        [str(Path(command[0]).resolve()) if "/" in command[0] else command[0], *command[1:]]
        if command
        else []
    )
    scenario = trace_scenario(argv, pid, duration, stop_signal, list(ports))
    view = view or ("live" if sys.stderr.isatty() else "quiet")
    run = TraceRun(scenario, RunOptions(runs_dir=runs_dir, view=view), pid)
    try:
        run_dir = run.execute()
    except OSError as e:
        raise CommandError(
            f"cannot make a run directory in {runs_dir}: {e.strerror or e}; "
            "give --runs-dir a directory you can write"
        ) from None
    if run.teardown_errors:
        click.echo(f"tcplab: trace: teardown: {'; '.join(run.teardown_errors)}", err=True)
    run.view.note("building report…")
    summary = _build(run_dir, scenario.name)
    meta = run.meta()
    # Ctrl-C is how a trace normally ends.
    code = run_exit({**meta, "interrupted": False}, summary)
    _print_outcome(scenario.name, run_dir, meta, summary, view, code)
    ctx.exit(int(code))


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.pass_context
def report(ctx: click.Context, run_dir: Path) -> None:
    """Rebuild every output of RUN_DIR from its raw recording.

    Exits with the run's own code (see the README's exit codes)."""
    from correlator.errors import ReportError
    from correlator.recording import read_run_meta
    from reports import build_reports

    try:
        is_dir = run_dir.is_dir()
    except PermissionError:
        raise CommandError(
            f"cannot read {run_dir} (permission denied): run `sudo tcplab report {run_dir}`"
        ) from None
    if not is_dir:
        raise CommandError(f"{run_dir} is not a run directory: give one of runs/<time>-<scenario>")
    if not os.access(run_dir, os.W_OK):
        raise CommandError(
            f"cannot write the outputs in {run_dir} (owned by another user): run "
            f"`sudo tcplab report {run_dir}`, or copy the run directory and report on the copy"
        )
    try:
        summary = build_reports(run_dir)
        meta = read_run_meta(run_dir)
    except ReportError as e:
        raise CommandError(str(e)) from None
    except PermissionError as e:
        raise CommandError(
            f"{e.filename}: permission denied: run `sudo tcplab report {run_dir}`"
        ) from None
    code = run_exit(meta, summary)
    _print_outcome(run_dir.name, run_dir, meta, summary, "text", code)
    ctx.exit(int(code))


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
