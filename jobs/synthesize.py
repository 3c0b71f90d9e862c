"""Synthesize photographs for a whole set of label maps with Ray Data; record it in MLflow.

    ray job submit -- python jobs/synthesize.py --model models:/crn-cityscapes-256x512@champion \
        --store s3://bucket/cityscapes --split val --output s3://bucket/synth/val --use-gpu --precision bf16
    python jobs/synthesize.py --model work/checkpoint.pt --labels my_label_maps/ --output work/synth
    python jobs/synthesize.py ... --dry-run            # print the resolved configuration

The job is pipeline.synthesis.job: one PNG per (sample, variant), a manifest, rejects, an
HTML gallery; re-running into the same output writes only what is missing.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # `python jobs/synthesize.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.runtime import entrypoint
from pipeline.synthesis.config import parse_synthesize_config


def main(argv: Sequence[str] | None = None) -> int:
    from pipeline.synthesis.job import run
    from pipeline.synthesis.plan import make_plan

    config = parse_synthesize_config(argv)
    if config.dry_run:
        print(json.dumps(make_plan(config).describe(), indent=1))
        return 0
    run(config)
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint(main)(sys.argv[1:]))
