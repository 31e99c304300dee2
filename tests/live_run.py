"""Test harness: a real `tcplab run` in a child process, with its bus reachable.

The orchestrator makes its bus directory with tempfile, so a TMPDIR of the
test's own puts it where the test can find it without guessing among the
directories of other runs on the machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bus.endpoints import Endpoints, ipc_endpoints

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class LiveRun:
    proc: subprocess.Popen[str]
    runs_dir: Path
    tmp_dir: Path

    def endpoints(self, timeout_s: float = 30.0) -> Endpoints:
        """The run's bus, once both its sockets are bound."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for d in self.tmp_dir.glob("tcplab-bus-*"):
                if (d / "events.sock").exists() and (d / "control.sock").exists():
                    return ipc_endpoints(d)
            if self.proc.poll() is not None:
                raise AssertionError(f"the run exited ({self.proc.returncode}) before its bus")
            time.sleep(0.05)
        raise AssertionError(f"no bus directory under {self.tmp_dir} after {timeout_s}s")

    def finish(self, timeout_s: float = 180.0) -> tuple[int, str, dict[str, Any]]:
        """Exit code, output and run.json of the finished run."""
        out, _ = self.proc.communicate(timeout=timeout_s)
        (run_dir,) = self.runs_dir.iterdir()
        return self.proc.returncode, out, json.loads((run_dir / "run.json").read_text())


def start(scenario: str, tmp_path: Path) -> LiveRun:
    runs_dir, tmp_dir = tmp_path / "runs", tmp_path / "tmp"
    tmp_dir.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "run", scenario, "--quiet", "--runs-dir",
         str(runs_dir)],
        cwd=ROOT, env={**os.environ, "TMPDIR": str(tmp_dir)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    return LiveRun(proc, runs_dir, tmp_dir)
