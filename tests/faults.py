"""Faults for tests: a Ray Train worker that dies once, the way a lost node would.

Production code carries no fault hooks. A test hands `pipeline.training.job.run` a train
loop that wraps the real one (`dying_once(...)`): on the chosen rank, right after the report
of the chosen step, once Ray Train has registered every report made so far (so the test
knows which checkpoint is the last), the worker process exits. A marker file makes it die
only once, so the restarted group runs to the end.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def dying_once(marker: Path, after_step: int, rank: int) -> Callable[[dict], dict]:
    """A train loop for `run(config, train_loop=...)` whose worker `rank` dies after reporting `after_step`."""

    def train_loop(loop_config: dict) -> dict:
        import ray.train

        from pipeline.training.loop import train_loop_per_worker

        real_report = ray.train.report

        def report(metrics, *args, **kwargs):
            real_report(metrics, *args, **kwargs)
            dies = ray.train.get_context().get_world_rank() == rank and metrics.get("step") == after_step
            if dies and not marker.exists():
                ray.train.get_all_reported_checkpoints()
                marker.write_text(f"worker of rank {rank} died after step {after_step}\n")
                os._exit(1)

        ray.train.report = report  # the worker process's own module; the loop looks it up per call
        try:
            return train_loop_per_worker(loop_config)
        finally:
            ray.train.report = real_report

    return train_loop
