"""Scenario files: every shipped one loads; a broken one says what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.scenario import ROLES, ScenarioError, available, find, load


def test_shipped_scenarios_load_with_known_roles() -> None:
    """Each seed experiment is a scenario, and every actor names a real module."""
    scenarios = {s.name: s for s in available()}
    assert {"echo", "bomb", "leak", "multiplex"} <= set(scenarios)
    for s in scenarios.values():
        assert s.summary and s.phases
        for actor in s.actors:
            assert actor.role in ROLES
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
