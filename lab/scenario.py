"""Scenarios: declarative TOML files under scenarios/, one per experiment.

A user writes a new experiment without code: the actors and their
arguments, the lab namespace's sysctls, the phases with their commands and
durations, and the kernel signature the run is expected to show.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import re
import signal
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from correlator.expect import ExpectationError, validate
from lab.capture import CaptureSpec
from lab.hosts import HostSpec
from lab.link import LinkSpec
from lab.topology import TopologyError, parse_capture, parse_hosts, parse_link, parse_phase_link

REPO = Path(__file__).resolve().parent.parent
SCENARIO_DIR = REPO / "scenarios"
ROLES = ("server", "client", "bomber", "leaker", "multiplexer", "observer")
# A foreign actor is any program (`command = [...]`), run by actors/foreign.py.
FOREIGN = "foreign"

# The keys each table may hold: anything else is a typo that would otherwise
# be ignored in silence (`until_don` made a phase run to its full length).
TOP_KEYS = ("name", "summary", "description", "lab", "actors", "phases", "expected")
LAB_KEYS = ("ports", "sysctls", "hosts", "link", "capture", "internals", "owners")
ACTOR_KEYS = ("name", "role", "args", "host")
FOREIGN_KEYS = ("name", "command", "env", "cwd", "host", "ready", "stop_signal")
READY_KEYS = ("port",)
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
PHASE_KEYS = ("name", "duration_s", "commands", "until_done", "link")
COMMAND_KEYS = ("actor", "name", "args")

# Bounds that keep a typo from running for days: a phase lasts at most an
# hour, and a number in an actor's arguments (a count, a rate, seconds) is at
# most a million.
MAX_PHASE_S = 3600.0
MAX_ARG_NUMBER = 1_000_000
SYSCTL_KEY = re.compile(r"net(\.[A-Za-z0-9_-]+)+")
SYSCTL_ROOT = Path("/proc/sys")


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
    capture: CaptureSpec | None = None
    # Load the TCP internals probes (cwnd, windows, retransmits, resets).
    internals: bool = False
    # Load the owner probes too (connect, fdio: EOF read, close per fd).
    owners: bool = False

    @property
    def duration_s(self) -> float:
        return sum(p.duration_s for p in self.phases)


def _need(table: dict[str, Any], key: str, typ: type, where: str) -> Any:
    value = table.get(key)
    if not isinstance(value, typ):
        raise ScenarioError(f"{where}: `{key}` must be a {typ.__name__}")
    return value


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ScenarioError(f"{where}: must be a table ({{ key = value, ... }})")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ScenarioError(f"{where}: must be a list ([...])")
    return value


def _known_keys(table: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean `{close[0]}`?" if close else f"known keys: {', '.join(known)}"
            raise ScenarioError(f"{where}: unknown key `{key}`; {hint}")


def _sysctls(value: Any, where: str) -> dict[str, Any]:
    """Checked before any namespace exists: per-namespace (net.*) keys this
    kernel has, with numbers or strings as values."""
    sysctls = _table(value, where)
    for key, v in sysctls.items():
        if not SYSCTL_KEY.fullmatch(key):
            raise ScenarioError(
                f"{where}: sysctl {key!r} is not per network namespace: "
                "only net.* keys belong in a lab"
            )
        if not (SYSCTL_ROOT / key.replace(".", "/")).exists():
            raise ScenarioError(f"{where}: this kernel has no sysctl {key!r} (see sysctl -a)")
        items = v if isinstance(v, list) else [v]
        if not items or not all(
            isinstance(x, int | str) and not isinstance(x, bool) and str(x).strip() for x in items
        ):
            raise ScenarioError(
                f"{where}: sysctl {key!r} = {v!r}: give a number, a string or a list of numbers"
            )
    return dict(sysctls)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _check_args(args: list[str], where: str) -> None:
    for i, arg in enumerate(args):
        value = _number(arg)
        if value is None:
            continue
        option = args[i - 1] if i and args[i - 1].startswith("--") else "a value"
        if not math.isfinite(value) or abs(value) > MAX_ARG_NUMBER:
            raise ScenarioError(
                f"{where}: {option} {arg} is out of range: numbers in actor args go up to "
                f"{MAX_ARG_NUMBER}"
            )


def _option(args: list[str], name: str) -> str | None:
    """The value of `--name VALUE` or `--name=VALUE` (the last one wins, as in argparse)."""
    found = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            found = args[i + 1]
        elif arg.startswith(name + "="):
            found = arg.split("=", 1)[1]
    return found


def _check_bomber_target(args: list[str], link: LinkSpec | None, where: str) -> None:
    """A port bomb outside the lab is an attack: refused before anything starts.

    A lab has loopback and, with a [lab.link], the link's two addresses: the
    target must be one of those (the bomber checks again where it runs)."""
    target = _option(args, "--target")
    if target is None:
        return  # the bomber's default is 127.0.0.1
    host = target.rpartition(":")[0].strip("[]") if ":" in target else target
    peers = {str(ipaddress.ip_interface(a).ip) for a in (link.addresses if link else ())}
    try:
        loopback = ipaddress.ip_address(host).is_loopback or host in peers
    except ValueError:
        raise ScenarioError(
            f"{where}: bomber target {target!r} is not IP:PORT; give 127.0.0.1:PORT or [::1]:PORT"
        ) from None
    if not loopback:
        raise ScenarioError(
            f"{where}: refusing bomber target {target}: a port bomb outside the lab is an "
            "attack; target 127.0.0.1, ::1 or an address of the scenario's [lab.link]"
        )


def _foreign(a: dict[str, Any], where: str) -> ActorSpec:
    """`command = [...]` with env, cwd, ready = { port = N } and stop_signal:
    the relay's arguments (actors/foreign.py). A relative program path with
    a slash (examples/go/bin/server) is the repository's."""
    _known_keys(a, FOREIGN_KEYS, where)
    command = _list(a["command"], f"{where} command")
    if not command or not all(isinstance(x, str) and x for x in command):
        raise ScenarioError(f"{where}: `command` must be a list of strings, the program first")
    if "/" in command[0] and not Path(command[0]).is_absolute():
        command = [str(REPO / command[0]), *command[1:]]
    _check_args(command, where)
    args = ["--command", json.dumps(command)]
    env = _table(a.get("env", {}), f"{where} env")
    for key, value in env.items():
        if (
            not ENV_NAME.fullmatch(key)
            or not isinstance(value, str | int)
            or isinstance(value, bool)
        ):
            raise ScenarioError(f'{where} env: {key} = {value!r}: give NAME = "text"')
        args += ["--env", f"{key}={value}"]
    if "cwd" in a:
        args += ["--cwd", str(REPO / _need(a, "cwd", str, where))]
    ready = _table(a.get("ready", {}), f"{where} ready")
    _known_keys(ready, READY_KEYS, f"{where} ready")
    if "port" in ready:
        port = ready["port"]
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ScenarioError(f"{where}: ready = {{ port = N }} takes a port from 1 to 65535")
        args += ["--ready-port", str(port)]
    stop = a.get("stop_signal", "SIGTERM")
    if stop not in signal.Signals.__members__:
        raise ScenarioError(
            f"{where}: stop_signal {stop!r}: give a name such as SIGTERM, SIGINT or SIGKILL"
        )
    args += ["--stop-signal", str(stop)]
    # The program waits at its relay's gate until the probes follow its pid
    # (lab/run.py releases it): a client's first connections would be missed.
    args.append("--gate")
    return ActorSpec(name=_need(a, "name", str, where), role=FOREIGN, args=args, host=a.get("host"))


def load(path: Path) -> Scenario:
    where = str(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ScenarioError(f"{where}: {e}") from None
    _known_keys(data, TOP_KEYS, where)
    name = _need(data, "name", str, where)
    actors = []
    for i, a in enumerate(_need(data, "actors", list, where)):
        aw = f"{where} actors[{i}]"
        if "command" in _table(a, aw):
            actors.append(_foreign(a, aw))
            continue
        _known_keys(a, ACTOR_KEYS, aw)
        spec = ActorSpec(
            name=_need(a, "name", str, aw),
            role=_need(a, "role", str, aw),
            args=[str(x) for x in _list(a.get("args", []), f"{aw} args")],
            host=a.get("host"),
        )
        if spec.role not in ROLES:
            raise ScenarioError(
                f"{where}: actor {spec.name!r} has role {spec.role!r}; "
                f"roles are {', '.join(ROLES)}, or give `command = [...]` "
                "to run any program"
            )
        _check_args(spec.args, f"{aw} ({spec.name})")
        actors.append(spec)
    names = {a.name for a in actors}
    lab = _table(data.get("lab", {}), f"{where} [lab]")
    _known_keys(lab, LAB_KEYS, f"{where} [lab]")
    try:
        hosts = parse_hosts(lab.get("hosts", {}), f"{where} [lab.hosts]")
        link = parse_link(lab["link"], hosts, f"{where} [lab.link]") if "link" in lab else None
        capture = (
            parse_capture(lab["capture"], link, f"{where} [lab.capture]")
            if "capture" in lab
            else None
        )
    except TopologyError as e:
        raise ScenarioError(str(e)) from None
    for h in hosts:
        _sysctls(h.sysctls, f"{where} [lab.hosts.{h.name}.sysctls]")
    for i, a in enumerate(actors):
        if hosts and a.host not in {h.name for h in hosts}:
            raise ScenarioError(
                f"{where}: actor {a.name!r} needs `host = ` one of "
                f"{', '.join(h.name for h in hosts)}"
            )
        if not hosts and a.host is not None:
            raise ScenarioError(
                f"{where}: actor {a.name!r} names host {a.host!r} but the "
                "scenario declares no [lab.hosts]"
            )
        if a.role == "bomber":
            _check_bomber_target(a.args, link, f"{where} actors[{i}] ({a.name})")
    if len(names) != len(actors):
        raise ScenarioError(f"{where}: actor names must be unique")
    phases = []
    for i, p in enumerate(_need(data, "phases", list, where)):
        pw = f"{where} phases[{i}]"
        _known_keys(_table(p, pw), PHASE_KEYS, pw)
        commands = []
        for j, c in enumerate(_list(p.get("commands", []), f"{pw} commands")):
            cw = f"{pw} commands[{j}]"
            _known_keys(_table(c, cw), COMMAND_KEYS, cw)
            args = _table(c.get("args", {}), f"{cw} args")
            commands.append(Command(_need(c, "actor", str, cw), _need(c, "name", str, cw), args))
        until = [str(x) for x in _list(p.get("until_done", []), f"{pw} until_done")]
        for actor in [c.actor for c in commands] + until:
            if actor not in names:
                raise ScenarioError(f"{pw}: no actor named {actor!r}")
        duration = p.get("duration_s")
        if (
            isinstance(duration, bool)
            or not isinstance(duration, int | float)
            or not 0 < duration <= MAX_PHASE_S
        ):
            raise ScenarioError(
                f"{pw}: `duration_s` must be a number of seconds above 0, at most {MAX_PHASE_S:g}"
            )
        try:
            change = parse_phase_link(p["link"], link, pw) if "link" in p else {}
        except TopologyError as e:
            raise ScenarioError(str(e)) from None
        phases.append(Phase(_need(p, "name", str, pw), float(duration), commands, until, change))
    if not phases:
        raise ScenarioError(f"{where}: a scenario needs at least one phase")
    expected = dict(_table(data.get("expected", {}), f"{where} [expected]"))
    try:
        validate(expected)
    except ExpectationError as e:
        raise ScenarioError(f"{where}: [expected] {e}") from None
    ports = lab.get("ports", [])
    if not isinstance(ports, list) or not all(
        isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536 for p in ports
    ):
        raise ScenarioError(f"{where} [lab]: `ports` must be a list of port numbers (1-65535)")
    return Scenario(
        name=name,
        summary=_need(data, "summary", str, where),
        description=str(data.get("description", "")).strip(),
        path=path,
        sysctls=_sysctls(lab.get("sysctls", {}), f"{where} [lab.sysctls]"),
        ports=list(ports),
        actors=actors,
        phases=phases,
        expected=expected,
        hosts=hosts,
        link=link,
        capture=capture,
        internals=_flag(lab.get("internals", False), f"{where} [lab]: `internals`"),
        owners=_flag(lab.get("owners", False), f"{where} [lab]: `owners`"),
    )


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ScenarioError(f"{where} must be true or false")
    return value


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
