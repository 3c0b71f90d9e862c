"""Train a segmenter on a store's real photos with Ray Train; log and register it in MLflow.

    python jobs/train_segmenter.py --store work/demo/store --resolution 64x128 --steps 600
    ray job submit -- python jobs/train_segmenter.py --store s3://bucket/my-data --num-workers 4 --use-gpu
    python jobs/train_segmenter.py --store ... --dry-run      # the resolved configuration

For data sets without a standard segmenter (the toy data, a user's own): the evaluation
(jobs/evaluate.py --segmenter models:/seg-<dataset>-<HxW>@current) scores synthesized images
with it. The job is pipeline.evaluation.segmenter_training; re-running the same command resumes.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # `python jobs/train_segmenter.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.evaluation.segmenter_training import parse_segmenter_config
from pipeline.runtime import entrypoint


def main(argv: Sequence[str] | None = None) -> int:
    from pipeline.evaluation.segmenter_training import resolve, run
    from pipeline.options import to_dict

    config = parse_segmenter_config(argv)
    if config.dry_run:
        print(json.dumps(to_dict(resolve(config)), indent=1))
        return 0
    run(config)
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint(main)(sys.argv[1:]))
