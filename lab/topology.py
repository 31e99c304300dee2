"""The scenario tables that describe hosts and their link.

    [lab.hosts.a]                       # one network namespace per host
    [lab.hosts.b.sysctls]
    "net.ipv4.tcp_congestion_control" = "reno"

    [lab.link]                          # a veth pair between the two hosts
    mtu = 1500
    addresses = ["198.18.0.1/24", "198.18.0.2/24"]
    loss_pct = 1                        # shaping, both directions ...
    [lab.link.egress.b]                 # ... or only for packets leaving b
    rate_mbit = 10

    [lab.capture]                       # packets.pcap of the link, taken on a's end
    host = "a"
    snaplen = 256

A phase may change the shaping when it starts: `link = { loss_pct = 100 }`
or `link = { egress = { b = { loss_pct = 100 } } }` (the peer vanishes).
"""

from __future__ import annotations

import re
from typing import Any

from lab.capture import MAX_SNAPLEN, MIN_SNAPLEN, CaptureSpec
from lab.hosts import HostSpec
from lab.link import (
    DEFAULT_ADDRESSES,
    DEFAULT_MTU,
    MAX_MTU,
    MIN_MTU,
    LinkError,
    LinkSpec,
    check_address,
)
from lab.shaping import KNOBS, Shape, ShapingError, parse_shape

HOST_NAME = re.compile(r"[a-z][a-z0-9]{0,11}")
HOST_KEYS = ("sysctls",)
LINK_KEYS = ("hosts", "mtu", "addresses", "offloads", "egress", *KNOBS)
PHASE_LINK_KEYS = ("egress", *KNOBS)
CAPTURE_KEYS = ("host", "snaplen")


class TopologyError(ValueError):
    """Hosts or a link that cannot be made as written."""


def _unknown(table: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    extra = sorted(set(table) - set(known))
    if extra:
        raise TopologyError(f"{where}: unknown key `{extra[0]}`; known keys: {', '.join(known)}")


def parse_hosts(value: Any, where: str) -> list[HostSpec]:
    if not isinstance(value, dict):
        raise TopologyError(f"{where}: give one table per host, e.g. [lab.hosts.a]")
    hosts = []
    for name, table in value.items():
        hw = f"{where}.{name}"
        if not HOST_NAME.fullmatch(name):
            raise TopologyError(
                f"{hw}: a host name is a lowercase letter then up to 11 lowercase letters or digits"
            )
        if not isinstance(table, dict):
            raise TopologyError(f"{hw}: must be a table")
        _unknown(table, HOST_KEYS, hw)
        sysctls = table.get("sysctls", {})
        if not isinstance(sysctls, dict):
            raise TopologyError(f"{hw}.sysctls: must be a table of net.* keys")
        hosts.append(HostSpec(name, dict(sysctls)))
    return hosts


def _egress(
    table: dict[str, Any], hosts: list[str], where: str, both: dict[str, float]
) -> dict[str, dict[str, float]]:
    """host -> the knobs given for packets leaving it (both directions first)."""
    out = {h: dict(both) for h in hosts} if both else {}
    per = table.get("egress", {})
    if not isinstance(per, dict):
        raise TopologyError(f"{where}.egress: give one table per host, e.g. egress.b")
    for host, knobs in per.items():
        if host not in hosts:
            raise TopologyError(
                f"{where}.egress.{host}: no host {host!r} on this link (hosts: {', '.join(hosts)})"
            )
        if not isinstance(knobs, dict):
            raise TopologyError(f"{where}.egress.{host}: must be a table of shaping knobs")
        _unknown(knobs, KNOBS, f"{where}.egress.{host}")
        out.setdefault(host, {}).update(_knobs(knobs, f"{where}.egress.{host}"))
    return out


def _knobs(table: dict[str, Any], where: str) -> dict[str, float]:
    try:
        shape = parse_shape(table, where)
    except ShapingError as e:
        raise TopologyError(str(e)) from None
    return {k: getattr(shape, k) for k in KNOBS if k in table}


def parse_link(value: Any, hosts: list[HostSpec], where: str) -> LinkSpec:
    if not isinstance(value, dict):
        raise TopologyError(f"{where}: must be a table")
    _unknown(value, LINK_KEYS, where)
    names = [h.name for h in hosts]
    ends = value.get("hosts", names if len(names) == 2 else None)
    if (
        not isinstance(ends, list)
        or len(ends) != 2
        or len(set(ends)) != 2
        or not all(e in names for e in ends)
    ):
        raise TopologyError(
            f"{where}: a link joins two declared hosts: set "
            f'`hosts = ["a", "b"]` (hosts: {", ".join(names) or "none"})'
        )
    mtu = value.get("mtu", DEFAULT_MTU)
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not MIN_MTU <= mtu <= MAX_MTU:
        raise TopologyError(f"{where}: `mtu` must be a whole number from {MIN_MTU} to {MAX_MTU}")
    addresses = value.get("addresses", list(DEFAULT_ADDRESSES))
    if not isinstance(addresses, list) or len(addresses) != 2:
        raise TopologyError(f"{where}: `addresses` must list two addresses, one per host")
    try:
        ifaces = [check_address(str(a), f"{where}.addresses") for a in addresses]
    except LinkError as e:
        raise TopologyError(str(e)) from None
    if ifaces[0].network != ifaces[1].network or ifaces[0].ip == ifaces[1].ip:
        raise TopologyError(f"{where}: the two addresses must differ and share one subnet")
    offloads = value.get("offloads")
    if offloads is not None and not isinstance(offloads, bool):
        raise TopologyError(f"{where}: `offloads` must be true or false")
    egress = _egress(value, ends, where, _knobs(value, where))
    return LinkSpec(
        hosts=(ends[0], ends[1]),
        mtu=mtu,
        addresses=(str(ifaces[0]), str(ifaces[1])),
        egress={h: Shape().merged(k) for h, k in egress.items()},
        offloads=offloads,
    )


def parse_capture(value: Any, link: LinkSpec | None, where: str) -> CaptureSpec:
    if link is None:
        raise TopologyError(f"{where}: a capture records the lab link, and this scenario has none")
    if not isinstance(value, dict):
        raise TopologyError(f"{where}: must be a table")
    _unknown(value, CAPTURE_KEYS, where)
    host = value.get("host", link.hosts[0])
    if host not in link.hosts:
        raise TopologyError(f"{where}: `host` must be an end of the link ({', '.join(link.hosts)})")
    snaplen = value.get("snaplen", CaptureSpec(host).snaplen)
    if (
        isinstance(snaplen, bool)
        or not isinstance(snaplen, int)
        or not (MIN_SNAPLEN <= snaplen <= MAX_SNAPLEN)
    ):
        raise TopologyError(f"{where}: `snaplen` must be from {MIN_SNAPLEN} to {MAX_SNAPLEN} bytes")
    return CaptureSpec(host, snaplen)


def parse_phase_link(value: Any, link: LinkSpec | None, where: str) -> dict[str, dict[str, float]]:
    """A phase's `link` table: host -> knobs to change when the phase starts."""
    if link is None:
        raise TopologyError(f"{where}: `link` changes the lab link, and this scenario has none")
    if not isinstance(value, dict):
        raise TopologyError(f"{where}: `link` must be a table, e.g. {{ loss_pct = 100 }}")
    _unknown(value, PHASE_LINK_KEYS, f"{where} link")
    return _egress(value, list(link.hosts), f"{where} link", _knobs(value, f"{where} link"))


def phase_shapes(link: LinkSpec, changes: list[dict[str, dict[str, float]]]) -> list[Shape]:
    """Every shape the link will take during the run (to check the kernel can)."""
    current = {h: link.egress.get(h, Shape()) for h in link.hosts}
    shapes = list(current.values())
    for change in changes:
        for host, knobs in change.items():
            current[host] = current[host].merged(knobs)
            shapes.append(current[host])
    return shapes
