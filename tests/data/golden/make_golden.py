"""Make the golden outputs the correlator is compared with (tests/test_correlator_golden.py).

    .venv/bin/python tests/data/golden/make_golden.py RUN_DIR SCENARIO   # take a new recording
    .venv/bin/python tests/data/golden/make_golden.py --diagnosis        # sentences only

Each <scenario>/ holds a real run's recording (gzip), its run.json, and what
the correlator made of it when the golden was taken: connections.jsonl.gz
and golden.json (counts, coverage, diagnosis, the live-state samples and
the digest of events.jsonl). The first goldens came from
the one-pass engine (correlator/engine.py, now gone) before the columnar one replaced
it. Take a new recording only when the recording format changes; when
diagnosis sentences change (correlator/diagnosis.py), regenerate with
--diagnosis, which rewrites golden.json's "diagnosis" and nothing else.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from reports import build_reports  # noqa: E402

SCENARIOS = ("echo", "leak", "bomb", "multiplex")


def replay(scenario: str) -> tuple[dict[str, Any], list[dict[str, Any]], str]:
    """Rebuild the reports of the stored recording in a scratch directory."""
    src = HERE / scenario
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / scenario
        run_dir.mkdir()
        shutil.copy(src / "run.json", run_dir / "run.json")
        with (
            gzip.open(src / "recording.msgpack.gz", "rb") as f,
            open(run_dir / "recording.msgpack", "wb") as out,
        ):
            shutil.copyfileobj(f, out)
        summary = build_reports(run_dir)
        conns = [json.loads(line) for line in (run_dir / "connections.jsonl").open()]
        digest = hashlib.sha256((run_dir / "events.jsonl").read_bytes()).hexdigest()
    return summary, conns, digest


def golden_of(summary: dict[str, Any], events_sha256: str) -> dict[str, Any]:
    counts = {k: v for k, v in summary["counts"].items() if k != "coverage"}
    return {
        "events_jsonl_sha256": events_sha256,
        "kernel_states": summary["plots"]["kernel_states"],
        "counts": counts,
        "coverage": summary["coverage"],
        "diagnosis": summary["diagnosis"],
        "losses": {k: v for k, v in summary["losses"].items() if k != "recording"},
    }


def take(run_dir: Path, scenario: str) -> None:
    dst = HERE / scenario
    dst.mkdir(exist_ok=True)
    shutil.copy(run_dir / "run.json", dst / "run.json")
    with (
        open(run_dir / "recording.msgpack", "rb") as f,
        gzip.open(dst / "recording.msgpack.gz", "wb", compresslevel=9) as out,
    ):
        shutil.copyfileobj(f, out)
    summary, conns, digest = replay(scenario)
    conns.sort(key=lambda c: c["id"])
    with gzip.open(dst / "connections.jsonl.gz", "wt", compresslevel=9) as out:
        for c in conns:
            out.write(json.dumps(c, sort_keys=True) + "\n")
    (dst / "golden.json").write_text(
        json.dumps(golden_of(summary, digest), indent=1, sort_keys=True)
    )


def diagnosis_only() -> None:
    for scenario in SCENARIOS:
        path = HERE / scenario / "golden.json"
        golden = json.loads(path.read_text())
        summary, _, _ = replay(scenario)
        golden["diagnosis"] = summary["diagnosis"]
        path.write_text(json.dumps(golden, indent=1, sort_keys=True))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", nargs="?", type=Path)
    ap.add_argument("scenario", nargs="?", choices=SCENARIOS)
    ap.add_argument("--diagnosis", action="store_true")
    args = ap.parse_args()
    if args.diagnosis:
        diagnosis_only()
    elif args.run_dir and args.scenario:
        take(args.run_dir, args.scenario)
    else:
        ap.error("pass RUN_DIR SCENARIO, or --diagnosis")


if __name__ == "__main__":
    main()
