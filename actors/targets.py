"""Where a load generator may aim: loopback, the lab namespace's own
addresses, or the far end of the lab link it sits on. Anything else is an
attack on someone else's machine and is refused with one line.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

from actors.runtime import UsageError
from lab.link import LAB_NET
from lab.netns import PREFIX as LAB_PREFIX


def _in_lab_namespace() -> bool:
    """True when this process runs in a network namespace named tcplab-*."""
    try:
        mine = os.stat("/proc/self/ns/net").st_ino
        for path in Path("/run/netns").glob(f"{LAB_PREFIX}*"):
            if path.stat().st_ino == mine:
                return True
    except OSError:
        return False
    return False


def _local_addresses() -> set[str]:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr()}


def _lab_link_peers() -> list[ipaddress.IPv4Network]:
    """Subnets in 198.18.0.0/15 (a lab link's range) of this namespace's addresses."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        nets = [
            ipaddress.ip_interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}").network
            for a in ipr.get_addr(family=socket.AF_INET)
        ]
    return [n for n in nets if isinstance(n, ipaddress.IPv4Network) and n.subnet_of(LAB_NET)]


def check_target(host: str, verb: str) -> None:
    """Refuse anything but loopback, an address of this lab namespace, or
    the far end of its lab link (198.18.0.0/15, on a subnet of this host)."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise UsageError(
            f"target {host!r} is not an IP address: give 127.0.0.1 or ::1 (no names)"
        ) from None
    if addr.is_loopback:
        return
    if _in_lab_namespace() and str(addr) in _local_addresses():
        return
    if _in_lab_namespace() and any(addr in net for net in _lab_link_peers()):
        return
    raise UsageError(
        f"refusing to {verb} {host}: load outside loopback and the lab is an attack; "
        "target 127.0.0.1 / ::1, an address inside the lab namespace or the far end of "
        "its lab link"
    )
