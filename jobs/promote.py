"""Make a registered CRN version @champion by hand, or demote it; recorded on the versions.

    python jobs/promote.py --model crn-toy-64x128 --version 3 --reason "chosen after a user study"
    python jobs/promote.py --model crn-toy-64x128 --version 3 --demote --reason "fails on night scenes"

The usual way is the gate (jobs/evaluate.py --promote), which promotes only a version that
scores better under the same protocol; this command is for decisions made on other grounds
(pipeline.registry.promote).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # `python jobs/promote.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.registry.promote import parse_promote_config, run
from pipeline.runtime import entrypoint


def main(argv: Sequence[str] | None = None) -> int:
    run(parse_promote_config(argv))
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint(main)(sys.argv[1:]))
