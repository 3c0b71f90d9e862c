"""Read every part of a preprocessed store back and check it against the manifest.

    python jobs/verify_store.py work/store
    python jobs/verify_store.py s3://bucket/cityscapes-store

Sizes, sha256 checksums, row counts, every row decoded; one line per part, then a summary.
Exit status 0 when the store is sound, 1 when anything is wrong, 2 when there is no store
there. The check is pipeline.data.verify; the jobs' own check when they open a store is the
cheap one (size and footer, pipeline.data.integrity).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # `python jobs/verify_store.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.data.verify import parse_verify_config, run
from pipeline.runtime import entrypoint


def main(argv: Sequence[str] | None = None) -> int:
    return run(parse_verify_config(argv))


if __name__ == "__main__":
    sys.exit(entrypoint(main)(sys.argv[1:]))
