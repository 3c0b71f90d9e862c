"""The end-to-end demo on the embedded defaults: toy data -> store -> segmenter and CRN ->
evaluation and gate -> synthesis -> summary.json with the scores.

    make demo                                   # or: python -m jobs.demo
    python -m jobs.demo --dry-run               # print the plan and exit

Everything runs on this machine with no set-up (pipeline.demo says what each stage does).
Re-running the same command resumes.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # `python jobs/demo.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.demo import parse_demo_config, run
from pipeline.runtime import entrypoint


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_demo_config(argv)
    plan = run(config)
    if config.dry_run:
        print(json.dumps(plan, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint(main)(sys.argv[1:]))
