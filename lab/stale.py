"""What a run killed without its teardown (kill -9, a power cut) leaves
behind, swept at the next start: lab namespaces and bus directories whose
orchestrator is gone. Other runs may be going on at the same time: only
what a dead process made is removed.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

from bus.endpoints import BUS_DIR_PREFIX, bus_dir_owner
from lab.netns import clean_stale, pid_alive


def clean_stale_bus_dirs(parent: Path | None = None) -> list[Path]:
    """Remove bus directories (0700, ours) of processes that are gone."""
    removed = []
    root = parent or Path(tempfile.gettempdir())
    for path in root.glob(f"{BUS_DIR_PREFIX}*"):
        pid = bus_dir_owner(path)
        try:
            st = path.lstat()
        except OSError:
            continue
        mine = stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()
        if not mine or stat.S_IMODE(st.st_mode) != 0o700 or pid is None:
            continue
        if pid != os.getpid() and not pid_alive(pid):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def sweep() -> list[str]:
    """Everything stale, by name: namespaces and bus directories."""
    return clean_stale() + [str(p) for p in clean_stale_bus_dirs()]
