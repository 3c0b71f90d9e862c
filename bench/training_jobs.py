"""What the benchmarks that run training jobs in their own process share: a throw-away work
folder and MLflow store, Ray started as the training job starts it, and the loop's own
steps/s per report window.

    with training_scratch("bench-train-eval-", EXPERIMENT) as scratch:
        outcome = pipeline.training.job.run(config)
        rates = window_rates(outcome.run_id)[1:]  # the first window holds the warm-up
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def training_scratch(prefix: str, experiment: str, environment: tuple[str, ...] = ()) -> Iterator[Path]:
    """A temporary folder holding the jobs' work folder (CRN_WORK_DIR), an SQLite MLflow store
    with `experiment` (artifacts beside it; MLflow's default is ./mlruns) and whatever else the
    benchmark writes. The variables set here, and those named in `environment` (which the
    benchmark may set), are put back as they were afterwards."""
    import mlflow

    from pipeline.runtime import init_ray

    saved = {key: os.environ.get(key) for key in ("CRN_WORK_DIR", "MLFLOW_TRACKING_URI", *environment)}
    with tempfile.TemporaryDirectory(prefix=prefix) as folder:
        scratch = Path(folder)
        os.environ["CRN_WORK_DIR"] = str(scratch / "work")
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{scratch / 'mlflow.db'}"
        try:
            init_ray(dashboard=True)  # as the training job starts it
            mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
            mlflow.create_experiment(experiment, artifact_location=(scratch / "artifacts").as_uri())
            yield scratch
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def window_rates(run_id: str) -> list[float]:
    """A training's steps/s per report window, as its loop logged them (first window first)."""
    from mlflow.tracking import MlflowClient

    return [m.value for m in sorted(MlflowClient().get_metric_history(run_id, "steps_per_s"), key=lambda m: m.step)]
