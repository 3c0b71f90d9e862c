"""Write a registered generator as TorchScript and/or ONNX, checked against eager PyTorch.

    python jobs/export.py --model models:/crn-toy-32x64/1 --format onnx
    python jobs/export.py --model crn-toy-32x64 --format torchscript,onnx --store work/store --out work/exported
    python jobs/export.py ... --dry-run          # the resolved configuration, nothing exported

The job is pipeline.export.job: uint8 class-index maps [B, H, W] in, the K images [B, K, 3, H,
W] out (float RGB, unclamped); each file run on real label maps (onnxruntime, torch.jit.load)
and compared with the eager network; the files and export.json written under --out and
logged on the MLflow run that registered the version.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # `python jobs/export.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.export.config import parse_export_config
from pipeline.options import to_dict
from pipeline.runtime import entrypoint


def main(argv: Sequence[str] | None = None) -> int:
    from pipeline.export.job import run

    config = parse_export_config(argv)
    if config.dry_run:
        print(json.dumps(to_dict(config), indent=1))
        return 0
    run(config)
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint(main)(sys.argv[1:]))
