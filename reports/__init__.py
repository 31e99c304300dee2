"""Writers of the run directory: JSON Lines, summary, HTML report, trace."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def build_reports(run_dir: Path) -> dict[str, Any]:
    """Rebuild every output of `run_dir` from its recording; return the summary."""
    from reports.build import build_reports as _build

    return _build(run_dir)


__all__ = ["build_reports"]
