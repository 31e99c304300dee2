"""Link shaping on the egress of each end of the lab link.

Which kernel piece does which knob, and why:
- loss_pct: a BPF classifier (lab/drop.bpf.c) on clsact drops a packet
  when a random number falls under a threshold kept in a map. It works on
  every kernel with cls_bpf, netem or not, and the map can be rewritten in
  the middle of a run: loss 100% is a peer host that vanished. Packets
  leaving host A are dropped on the *ingress* of B's end, i.e. on the wire:
  a drop on A's own egress is a local drop that TCP sees at once
  (NET_XMIT_DROP) and sends again as if for the first time, with no
  retransmission, no timeout and no lost-segment recovery (measured here).
- rate_mbit: tbf as the root qdisc.
- delay_ms, jitter_ms: netem only (`modprobe sch_netem` first; Debian's
  kernels ship it as a module). The CI kernel (6.18) has no netem: a scenario
  asking for delay there is refused before anything is made.
TSO/GSO/GRO are turned off on a shaped link (pyroute2's Ethtool) so that one
drop costs one MSS-sized segment, not a 64 KB super-packet.
"""

from __future__ import annotations

import gzip
import os
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pyroute2 import Ethtool, IPRoute, netns

DROP_SOURCE = Path(__file__).resolve().parent / "drop.bpf.c"
DROP_SLOTS = 2  # one program per link end; drop.bpf.c defines drop_0 and drop_1
CLSACT_INGRESS = "ffff:fff2"
THRESHOLD_ONE = 1 << 32  # drop.bpf.c drops when a u32 random number is below the threshold
TBF_LATENCY = "50ms"  # the longest a packet may wait in tbf's queue before tbf drops it
OFFLOADS = ("tx-tcp-segmentation", "tx-tcp6-segmentation", "tx-generic-segmentation", "rx-gro")
# The kernel's default of a device's gso_max_segs (GSO_MAX_SEGS, include/linux/netdevice.h).
GSO_MAX_SEGS = 65535
CONFIG = Path("/proc/config.gz")
# Distribution kernels (Debian's among them) have no /proc/config.gz but ship
# their build configuration beside the image.
BOOT_CONFIG = Path("/boot") / f"config-{os.uname().release}"


class ShapingError(RuntimeError):
    """Shaping this kernel cannot do, or a shaping request out of range."""


@dataclass(frozen=True)
class Shape:
    """What one direction of the link does to the packets that cross it."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0
    rate_mbit: float = 0.0

    @property
    def needs_netem(self) -> bool:
        return self.delay_ms > 0 or self.jitter_ms > 0

    @property
    def shaped(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))

    def merged(self, change: dict[str, float]) -> Shape:
        return Shape(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **change})


KNOBS = tuple(f.name for f in fields(Shape))
_LIMITS = {"delay_ms": 60_000.0, "jitter_ms": 60_000.0, "loss_pct": 100.0, "rate_mbit": 100_000.0}


def parse_shape(table: dict[str, Any], where: str, base: Shape | None = None) -> Shape:
    """The shaping knobs of a TOML table; other keys are left to the caller."""
    change: dict[str, float] = {}
    for knob in KNOBS:
        if knob not in table:
            continue
        value = table[knob]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ShapingError(f"{where}: `{knob}` must be a number")
        if not 0 <= value <= _LIMITS[knob]:
            raise ShapingError(f"{where}: `{knob}` must be from 0 to {_LIMITS[knob]:g}")
        change[knob] = float(value)
    return (base or Shape()).merged(change)


def _kernel_config() -> dict[str, str]:
    try:
        with gzip.open(CONFIG, "rt") as f:
            lines = f.read().splitlines()
    except OSError:
        try:
            lines = BOOT_CONFIG.read_text().splitlines()
        except OSError:
            return {}
    return dict(line.split("=", 1) for line in lines if line.startswith("CONFIG_"))


def _netem() -> bool:
    config = _kernel_config()
    value = config.get("CONFIG_NET_SCH_NETEM")
    if value == "m":
        # Debian builds netem as a module: load it before asking for it.
        subprocess.run(["modprobe", "sch_netem"], capture_output=True, check=False)
        return Path("/sys/module/sch_netem").exists()
    if value == "y":
        return True
    # No config to read: a loaded module still says yes.
    return not config and Path("/sys/module/sch_netem").exists()


def support() -> dict[str, str | None]:
    """Each knob -> how this kernel does it, or None when it cannot."""
    config = _kernel_config()

    def has(option: str) -> bool:
        return not config or config.get(option) in ("y", "m")

    bpf = has("CONFIG_NET_CLS_BPF") and has("CONFIG_NET_SCH_INGRESS")
    netem = _netem()
    return {
        "loss_pct": "BPF on the receiver's clsact ingress (lab/drop.bpf.c)" if bpf else None,
        "rate_mbit": "tbf" if has("CONFIG_NET_SCH_TBF") else None,
        "delay_ms": "netem" if netem else None,
        "jitter_ms": "netem" if netem else None,
    }


def check_supported(shapes: list[Shape]) -> None:
    """Raise ShapingError (one line) when a shape asks for what the kernel lacks."""
    can = support()
    for shape in shapes:
        for knob in KNOBS:
            if getattr(shape, knob) and can[knob] is None:
                need = (
                    "netem (CONFIG_NET_SCH_NETEM; `modprobe sch_netem`)"
                    if knob in ("delay_ms", "jitter_ms")
                    else knob
                )
                raise ShapingError(
                    f"link {knob} needs {need}, which this kernel lacks; drop `{knob}` "
                    "from the scenario or run it on a kernel that has it (`tcplab doctor`)"
                )


def set_offloads(netns_name: str, ifname: str, enable: bool) -> None:
    netns.pushns(netns_name)
    try:
        eth = Ethtool()
        try:
            features = eth.get_features(ifname)
            for name in OFFLOADS:
                if name in features.features:
                    features.features[name].enable = enable
            eth.set_features(ifname, features)
        finally:
            eth.close()
        # Without offloads the wire carries one segment per packet, yet TCP
        # still builds skbs of several segments (software GSO is always on
        # for TCP: sk_setup_caps) and a retransmitted skb counts all of them
        # in Tcp RetransSegs while tcp:tcp_retransmit_skb fires once. One
        # segment per skb makes the tracepoint's count the kernel's.
        with IPRoute() as ipr:
            index = ipr.link_lookup(ifname=ifname)
            if index:
                ipr.link("set", index=index[0], gso_max_segs=GSO_MAX_SEGS if enable else 1)
    finally:
        netns.popns()


class Shaper:
    """Shapes what leaves each end of a two-ended link.

    Rate and delay sit on the sender's egress; loss on the receiver's
    ingress (see the module's docstring). The BPF drop program is compiled
    the first time a loss is asked for and stays loaded while this object
    lives (the map is how a phase changes it).
    """

    def __init__(self, ends: dict[str, str], ifname: str) -> None:
        self.ends = ends  # host -> namespace name
        self.slots = {host: i for i, host in enumerate(ends)}
        if len(self.slots) > DROP_SLOTS:
            raise ShapingError(f"a link has {DROP_SLOTS} ends, not {len(self.slots)}")
        self.ifname = ifname
        # The end that receives what `host` sends.
        self.peer = {h: next(p for p in ends if p != h) for h in ends}
        self.shapes: dict[str, Shape] = {host: Shape() for host in ends}
        self._bpf: Any = None
        self._attached: set[str] = set()
        self._final: dict[str, dict[str, int]] = {}

    def _index(self, ipr: IPRoute) -> int:
        return int(ipr.link_lookup(ifname=self.ifname)[0])

    def apply(self, host: str, shape: Shape) -> None:
        check_supported([shape])
        old = self.shapes[host]
        if shape.loss_pct or host in self._attached:
            with IPRoute(netns=self.ends[self.peer[host]]) as ipr:
                self._set_loss(ipr, host, self._index(ipr), shape.loss_pct)
        with IPRoute(netns=self.ends[host]) as ipr:
            index = self._index(ipr)
            if (shape.rate_mbit, shape.delay_ms, shape.jitter_ms) != (
                old.rate_mbit,
                old.delay_ms,
                old.jitter_ms,
            ):
                self._set_root(ipr, index, old, shape)
        self.shapes[host] = shape

    def prepare(self, hosts: Iterable[str]) -> None:
        """Compile and load now the drop programs that a later phase's loss
        on what `hosts` send will attach. Compiled in the middle of a run,
        it kept the orchestrator busy for seconds on a loaded machine: its
        actors and probes took it for lost and ended (exit code 3)."""
        for host in hosts:
            self._program(self.slots[host])

    def _program(self, slot: int) -> Any:
        if self._bpf is None:
            from bcc import BPF

            self._bpf = BPF(
                src_file=str(DROP_SOURCE).encode(), cflags=[f"-DDROP_SLOTS={DROP_SLOTS}"]
            )
        return self._bpf.load_func(f"drop_{slot}".encode(), self._bpf.SCHED_CLS)

    def _set_loss(self, ipr: IPRoute, host: str, index: int, pct: float) -> None:
        slot = self.slots[host]
        fn = self._program(slot)
        # The threshold before the attach: the first packet the program sees
        # meets the new loss (after, one arriving in between was counted as
        # seen and let through, at 100% too).
        threshold = self._bpf[b"drop_threshold"]
        threshold[threshold.Key(slot)] = threshold.Leaf(round(pct / 100 * THRESHOLD_ONE))
        if host not in self._attached:
            ipr.tc("add", "clsact", index)
            ipr.tc(
                "add-filter",
                "bpf",
                index,
                ":1",
                fd=fn.fd,
                name=fn.name,
                parent=CLSACT_INGRESS,
                classid=1,
                direct_action=True,
            )
            self._attached.add(host)

    def _set_root(self, ipr: IPRoute, index: int, old: Shape, new: Shape) -> None:
        if old.rate_mbit or old.needs_netem:
            ipr.tc("del", index=index, root=True)
        if new.needs_netem:
            opts: dict[str, Any] = {
                "delay": int(new.delay_ms * 1000),
                "jitter": int(new.jitter_ms * 1000),
            }
            if new.rate_mbit:
                opts["rate"] = f"{round(new.rate_mbit * 1e6)}bit"
            ipr.tc("add", "netem", index, handle="1:", **opts)
        elif new.rate_mbit:
            rate_bytes = new.rate_mbit * 1e6 / 8
            # The bucket holds at least 10 ms of traffic and a few full frames.
            burst = max(int(rate_bytes / 100), 16 * 1514)
            ipr.tc(
                "add",
                "tbf",
                index,
                handle="1:",
                rate=f"{round(new.rate_mbit * 1e6)}bit",
                burst=burst,
                latency=TBF_LATENCY,
            )

    def counters(self) -> dict[str, dict[str, int]]:
        """Packets the drop program saw and dropped, per link end."""
        if self._bpf is None:
            return self._final
        seen, dropped = self._bpf[b"drop_seen"], self._bpf[b"drop_dropped"]
        return {
            host: {
                "seen": int(seen[seen.Key(slot)].value),
                "dropped": int(dropped[dropped.Key(slot)].value),
            }
            for host, slot in self.slots.items()
            if host in self._attached
        }

    def close(self) -> None:
        # The filters go with the namespaces; the program with this object.
        if self._bpf is not None:
            self._final = self.counters()
            self._bpf.cleanup()
            self._bpf = None
