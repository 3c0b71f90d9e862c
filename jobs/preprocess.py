"""Preprocess labelled photographs into the multi-resolution Parquet store, with Ray Data.

    python -m pipeline.data.toy --out work/toy --train 24 --val 6            # a toy data set
    python jobs/preprocess.py --source work/toy --out work/store --resolutions 64x128,128x256,256x512
    ray job submit -- python jobs/preprocess.py --source s3://bucket/cityscapes --out s3://bucket/store

The job is pipeline.preprocessing.job: bad inputs are listed with their reasons in the store's
manifest, every good sample is written, and re-running finishes an interrupted store.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # `python jobs/preprocess.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.options import to_dict
from pipeline.preprocessing.config import parse_preprocess_config
from pipeline.preprocessing.job import run
from pipeline.runtime import entrypoint


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_preprocess_config(argv)
    if config.dry_run:
        print(json.dumps(to_dict(config), indent=1))
        return 0
    run(config)
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint(main)(sys.argv[1:]))
