"""Train a CRN from a preprocessed store with Ray Train; track it in MLflow; register the model.

    ray job submit -- python jobs/train.py --store s3://bucket/cityscapes --num-workers 8 --use-gpu
    python jobs/train.py --store work/toy-store --preset crn-tiny --vgg-weights random --steps 50
    python jobs/train.py --store ... --dry-run      # the resolved configuration and the recipe table
    python jobs/train.py --store ... --preset crn-1024p --progressive   # 256p, then 512p, then 1024p
    python jobs/train.py --store ... --checkpoint-every 500 --eval-every 5000 --eval-segmenter drn-d-105:PATH \
        --eval-samples 100 --select-by miou    # scored beside the workers; the best checkpoint registered

The published recipe is the default (pipeline.training.recipe); the job itself is
pipeline.training.job, the chain of stages pipeline.training.progression. Re-running the
same command resumes from the last checkpoint.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # `python jobs/train.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.runtime import JobFailed, entrypoint
from pipeline.training.config import parse_train_config


def main(argv: Sequence[str] | None = None) -> int:
    from ray.train import TrainingFailedError

    from pipeline.training import progression
    from pipeline.training.job import run
    from pipeline.training.plan import dry_run_text, make_plan

    config = parse_train_config(argv)
    if config.dry_run:
        text = progression.dry_run_text(config) if config.progressive else dry_run_text(make_plan(config))
        print(json.dumps(text, indent=1))
        return 0
    try:
        if config.progressive:
            progression.run_progression(config)
        else:
            run(config)
    except TrainingFailedError as exc:  # workers failed more than --max-failures times
        print(exc, file=sys.stderr)  # then the run's URL and the error line (pipeline.runtime.entrypoint)
        raise JobFailed("training failed; re-run the same command to resume from its last checkpoint") from None
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint(main)(sys.argv[1:]))
