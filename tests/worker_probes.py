"""Probes for tests: what a Ray Train worker process was started with.

`recording_environment(folder, names)` is a train loop for `pipeline.training.job.run`
that writes the worker's values of the environment variables `names` to
`folder/rank-<r>.json`, then runs the real loop. Production code carries no probes.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable


def recording_environment(folder: Path, names: Iterable[str]) -> Callable[[dict], dict]:
    names = list(names)

    def train_loop(loop_config: dict) -> dict:
        import ray.train

        from pipeline.training.loop import train_loop_per_worker

        rank = ray.train.get_context().get_world_rank()
        (folder / f"rank-{rank}.json").write_text(json.dumps({name: os.environ.get(name) for name in names}))
        return train_loop_per_worker(loop_config)

    return train_loop
