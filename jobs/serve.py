"""Serve a registered model over HTTP with Ray Serve: synthesis on request, and a page to paint on.

    python jobs/serve.py --model models:/crn-cityscapes-256x512@champion --store s3://bucket/cityscapes
    python jobs/serve.py --model crn-toy-32x64 --port 8080 --max-batch-size 16 --max-replicas 4
    python jobs/serve.py ... --dry-run                 # print the resolved configuration

Then open http://127.0.0.1:8000/ to paint, or `curl --data-binary @label.png
http://127.0.0.1:8000/synthesize`. The replicas follow the alias (a new @champion is served
without dropping a request); Ctrl-C takes the service down. It is pipeline.serving.app
(docs/serving.md).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # `python jobs/serve.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.runtime import entrypoint
from pipeline.serving.config import parse_serve_config


def main(argv: Sequence[str] | None = None) -> int:
    from pipeline.serving.app import run
    from pipeline.serving.plan import make_plan

    config = parse_serve_config(argv)
    if config.dry_run:
        print(json.dumps(make_plan(config).describe(), indent=1))
        return 0
    run(config)
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint(main)(sys.argv[1:]))
