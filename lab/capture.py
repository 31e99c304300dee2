"""packets.pcap: the lab link's packets for the run, written by tcpdump.

tcpdump rather than our own AF_PACKET loop: it is the seed's tool, filters
in the kernel, writes a pcap any tool reads, and costs a process, not a
thread of the orchestrator. It runs inside one host's namespace on that
host's end of the link, keeps root (`-Z root`: the run directory is root's)
and flushes every packet (`-U`), so a run that ends early keeps what it saw.
"""

from __future__ import annotations

import re
import select
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from lab.link import IFNAME
from lab.netns import LabNamespace

PCAP = "packets.pcap"
DEFAULT_SNAPLEN = 256  # headers and options of every packet, not the payload
MIN_SNAPLEN, MAX_SNAPLEN = 64, 262144
READY_S = 10.0
STOP_S = 5.0


class CaptureError(RuntimeError):
    """tcpdump is missing or did not start."""


@dataclass(frozen=True)
class CaptureSpec:
    host: str  # which end of the link
    snaplen: int = DEFAULT_SNAPLEN


class Capture:
    def __init__(self, spec: CaptureSpec, ns: LabNamespace, run_dir: Path) -> None:
        self.spec = spec
        self.ns = ns
        self.path = run_dir / PCAP
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr = b""
        self.packets: int | None = None

    def start(self) -> Capture:
        argv = [
            "tcpdump",
            "-i",
            IFNAME,
            "-s",
            str(self.spec.snaplen),
            "-U",
            "-Z",
            "root",
            "-w",
            str(self.path),
            "tcp",
        ]
        try:
            self.proc = subprocess.Popen(
                self.ns.command(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        except OSError as e:
            raise CaptureError(
                f"cannot run tcpdump: {e}; install it (scripts/provision.sh)"
            ) from None
        # Packets sent before tcpdump says "listening" are not in the file:
        # the run's actors start after this line.
        assert self.proc.stderr is not None
        deadline = time.monotonic() + READY_S
        while b"listening on" not in self.stderr:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                self.stop()
                why = self.stderr.decode(errors="replace").strip().splitlines()
                raise CaptureError(f"tcpdump did not start: {why[-1] if why else 'no output'}")
            ready, _, _ = select.select([self.proc.stderr], [], [], left)
            if ready:
                chunk = self.proc.stderr.read1(4096)  # type: ignore[attr-defined]
                if not chunk:
                    continue
                self.stderr += chunk
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=STOP_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        self.stderr += err or b""
        m = re.search(rb"(\d+) packets? captured", self.stderr)
        self.packets = int(m.group(1)) if m else None

    def describe(self) -> dict[str, object]:
        return {
            "file": PCAP,
            "host": self.spec.host,
            "interface": IFNAME,
            "snaplen": self.spec.snaplen,
            "packets": self.packets,
        }
