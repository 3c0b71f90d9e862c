"""Train a segmenter on a store's real photos with Ray Train; log and register it in MLflow.

    python jobs/train_segmenter.py --store work/demo/store --resolution 64x128 --steps 600
    ray job submit -- python jobs/train_segmenter.py --store s3://bucket/my-data --num-workers 4 --use-gpu
    python jobs/train_segmenter.py --store ... --dry-run      # the resolved configuration

For data sets without a standard segmenter (the toy data, a user's own): the evaluation
(jobs/evaluate.py --segmenter models:/seg-<dataset>-<HxW>@current) scores synthesized images
with it. The job is pipeline.segmenter.job; re-running the same command resumes.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # `python jobs/train_segmenter.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.runtime import entrypoint
from pipeline.segmenter.config import parse_segmenter_config


def main(argv: Sequence[str] | None = None) -> int:
    from pipeline.options import to_dict
    from pipeline.segmenter.config import resolve
    from pipeline.segmenter.job import run

    config = parse_segmenter_config(argv)
    if config.dry_run:
        print(json.dumps(to_dict(resolve(config)), indent=1))
        return 0
    run(config)
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint(main)(sys.argv[1:]))
