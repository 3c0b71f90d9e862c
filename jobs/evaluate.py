"""Score a CRN as the field does, record it in MLflow, and optionally promote it through the gate.

    python jobs/evaluate.py --model models:/crn-toy-64x128/3 --store work/demo/store --split val \
        --segmenter models:/seg-toy-source-64x128@current --promote
    ray job submit -- python jobs/evaluate.py --model models:/crn-cityscapes-256x512/7 \
        --store s3://bucket/cityscapes --segmenter drn-d-105:/data/drn-d-105_ms_cityscapes.pth \
        --protocols cityscapes-upsampled,native --fid-weights /data/pt_inception-2015-12-05-6726825d.pth --promote
    python jobs/evaluate.py --oracle --store work/cityscapes --segmenter drn-d-105:... --resolution 256x512
    python jobs/evaluate.py ... --dry-run          # the plan and its protocol ids, nothing computed

The job is pipeline.evaluation.job: segmentation scores of the synthesized images and of the
real photos under each named convention, FID (with Inception weights), diversity; one MLflow
run; the scores as tags on the model version; the published Cityscapes rows printed beside a
matching protocol; `--promote` moves @champion only if the version beats it under the same
protocol.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # `python jobs/evaluate.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.evaluation.config import parse_evaluate_config
from pipeline.runtime import entrypoint


def main(argv: Sequence[str] | None = None) -> int:
    from pipeline.evaluation.job import run
    from pipeline.evaluation.plan import make_plan

    config = parse_evaluate_config(argv)
    if config.dry_run:
        print(json.dumps(make_plan(config).describe(), indent=1))
        return 0
    run(config)
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint(main)(sys.argv[1:]))
