"""Train on synthesized, test on real: what a generator's images are worth as training data.

    python jobs/utility.py --model crn-toy-32x64 --store work/demo/store
    ray job submit -- python jobs/utility.py --model models:/crn-cityscapes-256x512@champion \
        --store s3://bucket/cityscapes --num-workers 4 --use-gpu
    python jobs/utility.py --model ... --labels s3://bucket/gta5-labels --store s3://bucket/cityscapes

Synthesizes the train label maps, trains the project's segmenter on the synthesized images and,
as the reference, on the real photos (and on both), tests each on the real val photos, and
records utility = mIoU(synthesized) / mIoU(real) in MLflow and on the model version. The job is
pipeline.utility.job; re-running the same command reuses what is done.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # `python jobs/utility.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.runtime import entrypoint
from pipeline.utility.config import parse_utility_config


def main(argv: Sequence[str] | None = None) -> int:
    from pipeline.options import to_dict
    from pipeline.utility.job import run

    config = parse_utility_config(argv)
    if config.dry_run:
        print(json.dumps(to_dict(config), indent=1))
        return 0
    run(config)
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint(main)(sys.argv[1:]))
