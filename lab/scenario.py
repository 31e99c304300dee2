"""Scenarios: declarative TOML files under scenarios/, one per experiment.

A user writes a new experiment without code: the actors and their
arguments, the lab namespace's sysctls, the phases with their commands and
durations, and the kernel signature the run is expected to show.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from correlator.expect import ExpectationError, validate
from lab.hosts import HostSpec
from lab.link import LinkSpec
from lab.topology import TopologyError, parse_hosts, parse_link, parse_phase_link

SCENARIO_DIR = Path(__file__).resolve().parent.parent / "scenarios"
ROLES = ("server", "client", "bomber", "leaker", "multiplexer", "observer")


class ScenarioError(ValueError):
    """A scenario file that cannot be run as written."""


@dataclass(frozen=True)
class ActorSpec:
    name: str
    role: str
    args: list[str] = field(default_factory=list)
    host: str | None = None  # a [lab.hosts] name; None: the one lab namespace


@dataclass(frozen=True)
class Command:
    actor: str
    name: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Phase:
    name: str
    duration_s: float
    commands: list[Command] = field(default_factory=list)
    # End the phase early once every actor listed here has said eof
    # (e.g. clients that finished their work).
    until_done: list[str] = field(default_factory=list)
    # host -> shaping knobs changed on that host's link egress as the phase starts.
    link: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    description: str
    path: Path
    sysctls: dict[str, Any]
    ports: list[int]
    actors: list[ActorSpec]
    phases: list[Phase]
    expected: dict[str, Any]
    hosts: list[HostSpec] = field(default_factory=list)
    link: LinkSpec | None = None

    @property
    def duration_s(self) -> float:
        return sum(p.duration_s for p in self.phases)


def _need(table: dict[str, Any], key: str, typ: type, where: str) -> Any:
    value = table.get(key)
    if not isinstance(value, typ):
        raise ScenarioError(f"{where}: `{key}` must be a {typ.__name__}")
    return value


def load(path: Path) -> Scenario:
    where = str(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ScenarioError(f"{where}: {e}") from None
    name = _need(data, "name", str, where)
    actors = []
    for i, a in enumerate(_need(data, "actors", list, where)):
        spec = ActorSpec(
            name=_need(a, "name", str, f"{where} actors[{i}]"),
            role=_need(a, "role", str, f"{where} actors[{i}]"),
            args=[str(x) for x in a.get("args", [])],
            host=a.get("host"),
        )
        if spec.role not in ROLES:
            raise ScenarioError(f"{where}: actor {spec.name!r} has role {spec.role!r}; "
                                f"roles are {', '.join(ROLES)}")
        actors.append(spec)
    names = {a.name for a in actors}
    lab = data.get("lab", {})
    try:
        hosts = parse_hosts(lab.get("hosts", {}), f"{where} [lab.hosts]")
        link = parse_link(lab["link"], hosts, f"{where} [lab.link]") if "link" in lab else None
    except TopologyError as e:
        raise ScenarioError(str(e)) from None
    for a in actors:
        if hosts and a.host not in {h.name for h in hosts}:
            raise ScenarioError(f"{where}: actor {a.name!r} needs `host = ` one of "
                                f"{', '.join(h.name for h in hosts)}")
        if not hosts and a.host is not None:
            raise ScenarioError(f"{where}: actor {a.name!r} names host {a.host!r} but the "
                                "scenario declares no [lab.hosts]")
    if len(names) != len(actors):
        raise ScenarioError(f"{where}: actor names must be unique")
    phases = []
    for i, p in enumerate(_need(data, "phases", list, where)):
        pw = f"{where} phases[{i}]"
        commands = [
            Command(_need(c, "actor", str, pw), _need(c, "name", str, pw), dict(c.get("args", {})))
            for c in p.get("commands", [])
        ]
        until = [str(x) for x in p.get("until_done", [])]
        for actor in [c.actor for c in commands] + until:
            if actor not in names:
                raise ScenarioError(f"{pw}: no actor named {actor!r}")
        duration = p.get("duration_s")
        if not isinstance(duration, int | float) or duration <= 0:
            raise ScenarioError(f"{pw}: `duration_s` must be a positive number of seconds")
        try:
            change = parse_phase_link(p["link"], link, pw) if "link" in p else {}
        except TopologyError as e:
            raise ScenarioError(str(e)) from None
        phases.append(Phase(_need(p, "name", str, pw), float(duration), commands, until, change))
    if not phases:
        raise ScenarioError(f"{where}: a scenario needs at least one phase")
    expected = dict(data.get("expected", {}))
    try:
        validate(expected)
    except ExpectationError as e:
        raise ScenarioError(f"{where}: [expected] {e}") from None
    return Scenario(
        name=name,
        summary=_need(data, "summary", str, where),
        description=str(data.get("description", "")).strip(),
        path=path,
        sysctls=dict(lab.get("sysctls", {})),
        ports=[int(p) for p in lab.get("ports", [])],
        actors=actors,
        phases=phases,
        expected=expected,
        hosts=hosts,
        link=link,
    )


def available(directory: Path = SCENARIO_DIR) -> list[Scenario]:
    return [load(p) for p in sorted(directory.glob("*.toml"))]


def find(name: str, directory: Path = SCENARIO_DIR) -> Scenario:
    """A scenario by name, or a path to a .toml file."""
    path = Path(name)
    if path.suffix == ".toml" and path.exists():
        return load(path)
    candidate = directory / f"{name}.toml"
    if candidate.exists():
        return load(candidate)
    known = ", ".join(s.name for s in available(directory)) or "none"
    raise ScenarioError(f"no scenario {name!r} (known: {known}); `tcplab list` shows them")
