"""Probes for tests: what a Ray worker process was started with.

`recording_environment(folder, names)` is a train loop for `pipeline.training.job.run`
that writes the worker's values of the environment variables `names` to
`folder/rank-<r>.json`, then runs the real loop. `recording_actor(actor_class, folder,
names)` does the same for a Ray Data actor class (synthesis, scoring): it writes
`folder/actor-<pid>.json` as the actor starts. Production code carries no probes.
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


def recording_actor(actor_class: type, folder: Path, names: Iterable[str]) -> type:
    names = list(names)

    # Defined here, not at module level, and calling nothing of this module's: cloudpickle
    # then sends the class itself to the workers, which need not import this module.
    class RecordingActor(actor_class):
        def __init__(self, *args, **kwargs):
            (folder / f"actor-{os.getpid()}.json").write_text(json.dumps({name: os.environ.get(name) for name in names}))
            super().__init__(*args, **kwargs)

    return RecordingActor
