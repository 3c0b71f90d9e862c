"""Import the authors' released models (TF1 checkpoints) as CRN checkpoints; register them in MLflow.

    python jobs/import_weights.py --checkpoint result_256p --preset crn-256p --register
    python jobs/import_weights.py --checkpoint result_GTA/model.ckpt --dataset gta5 --register
    python jobs/synthesize.py --model models:/crn-authors-cityscapes-256x512@candidate --labels ...

No TensorFlow is needed. The job is pipeline.registry.import_weights: every tensor must map
onto the model and every parameter be set; a checkpoint of another preset, a missing or
truncated file is one line on stderr.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # `python jobs/import_weights.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.options import to_dict
from pipeline.registry.import_weights import parse_import_config, run
from pipeline.runtime import entrypoint


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_import_config(argv)
    if config.dry_run:
        print(json.dumps(to_dict(config), indent=1))
        return 0
    run(config)
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint(main)(sys.argv[1:]))
