"""Scenario files: every shipped one loads; a broken one says what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.scenario import FOREIGN, ROLES, ScenarioError, available, find, load


def test_shipped_scenarios_load_with_known_roles() -> None:
    """Each seed experiment is a scenario, and every actor names a real module."""
    scenarios = {s.name: s for s in available()}
    assert {"echo", "bomb", "leak", "multiplex"} <= set(scenarios)
    for s in scenarios.values():
        assert s.summary and s.phases
        for actor in s.actors:
            assert actor.role in (*ROLES, FOREIGN)
            assert (Path(__file__).parent.parent / "actors" / f"{actor.role}.py").exists()


def test_unknown_scenario_names_the_known_ones() -> None:
    with pytest.raises(ScenarioError, match="known: .*echo"):
        find("nope")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name = 'x'\nsummary = 's'\nactors = []\nphases = []\n", "at least one phase"),
        (
            "name = 'x'\nsummary = 's'\nactors = [{name='a', role='wizard'}]\nphases = []\n",
            "role 'wizard'",
        ),
        (
            "name = 'x'\nsummary = 's'\nactors = []\n"
            "phases = [{name='p', duration_s=1, commands=[{actor='ghost', name='start'}]}]\n",
            "no actor named 'ghost'",
        ),
        (
            "name = 'x'\nsummary = 's'\nactors = []\nphases = [{name='p', duration_s=0}]\n",
            "duration_s",
        ),
        ("name = \n", "x.toml"),
    ],
)
def test_bad_scenario_is_refused_with_the_reason(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "x.toml"
    path.write_text(text)
    with pytest.raises(ScenarioError, match=message):
        load(path)


GOOD_ACTOR = "[[actors]]\nname = 'c'\nrole = 'client'\nargs = ['--repeat', '3']\n"
GOOD_PHASE = "[[phases]]\nname = 'p'\nduration_s = 1\n"
HEAD = "name = 'x'\nsummary = 's'\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # A typo in a key is refused with the nearest known key.
        (
            HEAD + GOOD_ACTOR + "[[phases]]\nname='p'\nduration_s=1\nuntil_don=['c']\n",
            r"phases\[0\]: unknown key `until_don`; did you mean `until_done`\?",
        ),
        (
            HEAD + "[lab]\nportz = [80]\n" + GOOD_ACTOR + GOOD_PHASE,
            r"\[lab\]: unknown key `portz`; did you mean `ports`\?",
        ),
        (
            HEAD + "nmae = 'y'\n" + GOOD_ACTOR + GOOD_PHASE,
            r"unknown key `nmae`; did you mean `name`",
        ),
        (
            HEAD + "[[actors]]\nname='c'\nrole='client'\narg=['x']\n" + GOOD_PHASE,
            r"actors\[0\]: unknown key `arg`; did you mean `args`",
        ),
        (
            HEAD
            + GOOD_ACTOR
            + "[[phases]]\nname='p'\nduration_s=1\ncommands=[{actor='c', name='start', arsg={}}]\n",
            r"commands\[0\]: unknown key `arsg`",
        ),
        # Sysctls are checked at load, before any namespace or run directory.
        (
            HEAD + "[lab.sysctls]\n'fs.file-max' = 10\n" + GOOD_ACTOR + GOOD_PHASE,
            "not per network namespace",
        ),
        (
            HEAD + "[lab.sysctls]\n'net.ipv4.tcp_no_such_knob' = 1\n" + GOOD_ACTOR + GOOD_PHASE,
            "this kernel has no sysctl 'net.ipv4.tcp_no_such_knob'",
        ),
        (
            HEAD + "[lab.sysctls]\n'net.ipv4.tcp_tw_reuse' = true\n" + GOOD_ACTOR + GOOD_PHASE,
            "give a number",
        ),
        (
            HEAD + "[lab.hosts.a.sysctls]\n'net.ipv4.tcp_no_such_knob' = 1\n"
            "[[actors]]\nname='c'\nrole='client'\nhost='a'\n" + GOOD_PHASE,
            r"\[lab.hosts.a.sysctls\]: this kernel has no sysctl",
        ),
        # Bounds: a number no run could reach, a phase of days.
        (
            HEAD + "[[actors]]\nname='c'\nrole='client'\nargs=['--repeat', 1e20]\n" + GOOD_PHASE,
            r"--repeat 1e\+20 is out of range",
        ),
        (
            HEAD
            + "[[actors]]\nname='c'\nrole='client'\nargs=['--repeat', '100000000000000000000']\n"
            + GOOD_PHASE,
            "--repeat 100000000000000000000 is out of range",
        ),
        (
            HEAD + "[[actors]]\nname='c'\nrole='client'\nargs=['--repeat', 'inf']\n" + GOOD_PHASE,
            "--repeat inf is out of range",
        ),
        (HEAD + GOOD_ACTOR + "[[phases]]\nname='p'\nduration_s=1e9\n", "at most 3600"),
        (HEAD + "[lab]\nports = [70000]\n" + GOOD_ACTOR + GOOD_PHASE, "port numbers"),
        # A bomber aimed outside the lab is refused with the reason.
        (
            HEAD
            + "[[actors]]\nname='b'\nrole='bomber'\nargs=['--target', '8.8.8.8:53']\n"
            + GOOD_PHASE,
            "refusing bomber target 8.8.8.8:53: a port bomb outside the lab",
        ),
        (
            HEAD
            + "[[actors]]\nname='b'\nrole='bomber'\nargs=['--target=10.0.0.1:80']\n"
            + GOOD_PHASE,
            "refusing bomber target 10.0.0.1:80",
        ),
        (
            HEAD
            + "[[actors]]\nname='b'\nrole='bomber'\nargs=['--target', 'example.com:80']\n"
            + GOOD_PHASE,
            "is not IP:PORT",
        ),
        (
            HEAD + "[[actors]]\nname='c'\nrole='client'\nargs='--repeat 3'\n" + GOOD_PHASE,
            r"args: must be a list",
        ),
    ],
)
def test_scenario_mistakes_are_refused_at_load(tmp_path: Path, text: str, message: str) -> None:
    """Each mistake is one ScenarioError naming the file and what to change."""
    path = tmp_path / "x.toml"
    path.write_text(text)
    with pytest.raises(ScenarioError, match=message) as info:
        load(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_loopback_bomber_targets_load(tmp_path: Path) -> None:
    """127.0.0.1 and [::1] are the lab's own: accepted."""
    path = tmp_path / "x.toml"
    path.write_text(
        HEAD + "[[actors]]\nname='b'\nrole='bomber'\nargs=['--target', '[::1]:80']\n"
        "[[actors]]\nname='c'\nrole='bomber'\nargs=['--target', '127.0.0.2:80']\n" + GOOD_PHASE
    )
    assert [a.name for a in load(path).actors] == ["b", "c"]
