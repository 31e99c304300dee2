"""Writers of the run directory: JSON Lines, summary, HTML report, trace."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def build_reports(run_dir: Path) -> dict[str, Any]:
    """Rebuild every output of `run_dir` from its recording; return the summary."""
    # Imported here so `import reports` stays cheap: matplotlib loads only
    # when a report is actually built.
    from reports.build import build_reports as _build

    return _build(run_dir)


__all__ = ["build_reports"]
