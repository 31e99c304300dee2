"""The lab link: a veth pair joining two hosts, addressed in 198.18.0.0/15.

198.18.0.0/15 is the benchmarking range (RFC 2544), never routed: traffic
the lab sends to it cannot leave the machine by mistake. Both ends are
called `lab0`, one in each host's namespace.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from pyroute2 import IPRoute

from lab.shaping import Shape, Shaper, set_offloads

LAB_NET = ipaddress.IPv4Network("198.18.0.0/15")
IFNAME = "lab0"
DEFAULT_MTU = 1500
DEFAULT_ADDRESSES = ("198.18.0.1/24", "198.18.0.2/24")
MIN_MTU, MAX_MTU = 576, 65535


class LinkError(ValueError):
    """A link that cannot be made as written."""


def check_address(text: str, where: str) -> ipaddress.IPv4Interface:
    try:
        iface = ipaddress.IPv4Interface(text)
    except ValueError:
        raise LinkError(
            f"{where}: {text!r} is not an IPv4 address with a prefix, e.g. 198.18.0.1/24"
        ) from None
    if iface.ip not in LAB_NET or not iface.network.subnet_of(LAB_NET):
        raise LinkError(
            f"{where}: {text} is outside 198.18.0.0/15, the only range a lab "
            "link may use (it is never routed)"
        )
    return iface


@dataclass(frozen=True)
class LinkSpec:
    hosts: tuple[str, str]
    mtu: int = DEFAULT_MTU
    addresses: tuple[str, str] = DEFAULT_ADDRESSES
    # host -> what happens to packets leaving that host.
    egress: dict[str, Shape] = field(default_factory=dict)
    # None: off when the link is shaped anywhere in the scenario, else on.
    offloads: bool | None = None


class Link:
    def __init__(
        self, spec: LinkSpec, ends: dict[str, str], shaped: bool = False, lossy: Iterable[str] = ()
    ) -> None:
        """`ends`: host -> namespace name; `shaped`: some phase shapes the
        link; `lossy`: the hosts whose egress some phase makes lossy."""
        self.spec = spec
        self.lossy = set(lossy)
        self.ends = {h: ends[h] for h in spec.hosts}
        self.shaper = Shaper(self.ends, IFNAME)
        shaped = shaped or any(s.shaped for s in spec.egress.values())
        self.offloads = spec.offloads if spec.offloads is not None else not shaped

    def address(self, host: str) -> str:
        return str(ipaddress.IPv4Interface(self.spec.addresses[self.spec.hosts.index(host)]).ip)

    def create(self) -> Link:
        a, b = self.spec.hosts
        with IPRoute(netns=self.ends[a]) as ipr:
            ipr.link(
                "add",
                ifname=IFNAME,
                kind="veth",
                peer={"ifname": IFNAME, "net_ns_fd": self.ends[b]},
            )
        for host, cidr in zip(self.spec.hosts, self.spec.addresses, strict=True):
            iface = ipaddress.IPv4Interface(cidr)
            with IPRoute(netns=self.ends[host]) as ipr:
                index = ipr.link_lookup(ifname=IFNAME)[0]
                ipr.link("set", index=index, mtu=self.spec.mtu)
                ipr.addr(
                    "add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen
                )
                ipr.link("set", index=index, state="up")
            set_offloads(self.ends[host], IFNAME, self.offloads)
        for host, shape in self.spec.egress.items():
            if shape.shaped:
                self.shaper.apply(host, shape)
        self.shaper.prepare(self.lossy)
        return self

    def set_mtu(self, mtu: int) -> None:
        for ns in self.ends.values():
            with IPRoute(netns=ns) as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname=IFNAME)[0], mtu=mtu)

    def reshape(self, change: dict[str, dict[str, float]]) -> None:
        """A phase's change: host -> knobs to set on that host's egress."""
        for host, knobs in change.items():
            self.shaper.apply(host, self.shaper.shapes[host].merged(knobs))

    def destroy(self) -> None:
        # The veth pair and its filters go with the namespaces; the drop
        # program goes with the shaper.
        self.shaper.close()
