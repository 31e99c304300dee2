"""The `tcplab` command as a user runs it: each command, each exit code
(README: "Exit codes"), one line for every mistake, never a traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from lab_helpers import ROOT, TCPLAB, small_scenario, tcplab
from pyroute2 import netns

from lab.netns import PREFIX


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def test_list_shows_every_scenario_file() -> None:
    """One line per scenarios/*.toml, its name first, exit 0."""
    out = tcplab("list")
    assert out.returncode == 0, out.stderr
    names = [line.split()[0] for line in out.stdout.splitlines()]
    assert names == sorted(p.stem for p in (ROOT / "scenarios").glob("*.toml"))


@pytest.mark.root
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "nope"], "no scenario 'nope'"),
        (["run", "{tmp}/typo.toml"], "unknown key `duration`; did you mean `duration_s`?"),
        (["run", "{tmp}/far.toml"], "refusing bomber target 192.0.2.1:80"),
        (["report", "{tmp}/no-such-run"], "is not a run directory"),
        (["report", "{tmp}"], "no recording"),
        (
            ["run", "{tmp}/ok.toml", "--runs-dir", "/proc/tcplab-runs"],
            "cannot make a run directory in /proc/tcplab-runs",
        ),
    ],
)
def test_mistakes_exit_2_with_one_line_and_leave_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    """Usage and scenario errors: exit 2, one line on stderr, no run
    directory and no namespace made."""
    (tmp_path / "typo.toml").write_text(
        "name='t'\nsummary='s'\nactors=[]\n[[phases]]\nname='p'\nduration=1\n"
    )
    (tmp_path / "far.toml").write_text(
        "name='f'\nsummary='s'\n[[actors]]\nname='b'\nrole='bomber'\n"
        "args=['--target', '192.0.2.1:80']\n[[phases]]\nname='p'\nduration_s=1\n"
    )
    small_scenario(tmp_path, "ok")
    runs = tmp_path / "runs"
    argv = [a.format(tmp=tmp_path) for a in args]
    if argv[0] == "run" and "--runs-dir" not in argv:
        argv += ["--runs-dir", str(runs)]
    # Started here, not with tcplab(), for its pid: a run names its namespaces
    # tcplab-<pid>-..., and other runs on the machine may be making theirs now.
    with subprocess.Popen(
        [TCPLAB, *argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        stdout, stderr = proc.communicate(timeout=300)
    out = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    assert out.returncode == 2, out
    assert message in one_line(out.stderr)
    assert not runs.exists()
    assert [] == [n for n in netns.listnetns() if n.startswith(f"{PREFIX}{proc.pid}-")]


@pytest.mark.parametrize(
    "user_cmd", [["doctor"], ["watch", "--duration", "1"], ["run", "echo"], ["run", "all"]]
)
def test_root_commands_as_non_root_say_to_use_sudo(user_cmd: list[str]) -> None:
    """As `nobody`: one line saying to run it with sudo, exit 2."""
    out = tcplab(*user_cmd, user="nobody")
    assert out.returncode == 2, out
    assert f"run `sudo tcplab {user_cmd[0]}`" in one_line(out.stderr)


@pytest.mark.root
@pytest.mark.bpf
@pytest.mark.netns
@pytest.mark.slow
def test_run_path_and_report_exit_codes(tmp_path: Path) -> None:
    """`tcplab run a.toml b.toml`: one run that holds (0) and one whose
    expectation fails (1) exit with the worst, 1; `tcplab report` of each
    run exits with that run's own code; as `nobody`, report on the
    root-owned run says what to do in one line."""
    good = small_scenario(tmp_path, "good", clean=">=3")
    bad = small_scenario(tmp_path, "bad", clean=">=1000")
    runs = tmp_path / "runs"
    out = tcplab("run", str(good), str(bad), "--json", "--runs-dir", str(runs))
    assert out.returncode == 1, out.stderr
    results = {
        r["scenario"]: r for r in map(json.loads, out.stdout.splitlines()) if "exit_code" in r
    }
    assert {n: r["exit_code"] for n, r in results.items()} == {"good": 0, "bad": 1}
    for name, code in (("good", 0), ("bad", 1)):
        run_dir = Path(results[name]["run_dir"])
        (run_dir / "report.html").unlink()
        again = tcplab("report", str(run_dir))
        assert again.returncode == code, again
        assert (run_dir / "report.html").exists()
        assert f"exit code {code}" in again.stdout
    # As another user: a run it cannot read (under pytest's 0700 tmp), and
    # one it can read but not write (a copy in a world-readable directory).
    run_dir = Path(results["good"]["run_dir"])
    shared = Path(tempfile.mkdtemp(prefix="tcplab-test-"))
    try:
        shared.chmod(0o755)
        copy = Path(shutil.copytree(run_dir, shared / run_dir.name))
        copy.chmod(0o755)
        for where in (run_dir, copy):
            as_nobody = tcplab("report", str(where), user="nobody")
            assert as_nobody.returncode == 2, as_nobody
            assert f"sudo tcplab report {where}" in one_line(as_nobody.stderr)
    finally:
        shutil.rmtree(shared)


@pytest.mark.root
@pytest.mark.bpf
@pytest.mark.netns
@pytest.mark.slow
def test_two_runs_of_one_scenario_at_once_get_their_own_directories(tmp_path: Path) -> None:
    """Started in the same second, two runs of one scenario do not collide."""
    path = small_scenario(tmp_path, "twin", clients_s=0.5)
    runs = tmp_path / "runs"
    procs = [
        subprocess.Popen(
            [TCPLAB, "run", str(path), "--quiet", "--runs-dir", str(runs)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    dirs = sorted(runs.iterdir())
    assert len(dirs) == 2 and all((d / "run.json").exists() for d in dirs)


def test_run_directories_of_one_second_are_distinct(tmp_path: Path) -> None:
    """Three directories for one scenario made at once: three names."""
    from lab.recording import unique_run_dir

    dirs = [unique_run_dir(tmp_path, "echo") for _ in range(3)]
    assert len(set(dirs)) == 3 and all(d.is_dir() for d in dirs)
