"""MLflow for the training job: the driver owns the run, and Ray Train's controller logs into it.

Who writes what, and why:
- The driver (pipeline.training.job) starts the run (or resumes the one an earlier attempt of the
  same Ray Train run left, found by the tag `crn.ray_run`), logs the whole config as
  params, and after `fit()` logs and registers the final checkpoint.
- While `fit()` runs the driver only waits, and `MLflowReports`, a Ray Train callback, logs
  every step's losses, the throughput and the image grids as the workers report them. The
  callback runs in the Train controller, an actor that Ray Train pins to the driver's node,
  so a local SQLite tracking file works as well as a tracking server, and exactly one
  process writes to the store at any time (SQLite wants no more; stack-notes.md).
- Workers never talk to MLflow. Each report carries the per-step losses since the last
  one (averaged over ranks here); image grids are PNG files that rank 0 writes into the
  run's storage (`<storage>/<run>/images/`), which the callback copies into the run.

After a lost worker the group restarts from the last checkpoint and redoes some steps;
each step is logged once (the first time), so the curves have no duplicate points.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from collections import defaultdict
from typing import Any

from ray.train import UserCallback

from pipeline.fs import filesystem_for, read_bytes, uri_join
from pipeline.records import start_job_run
from pipeline.runtime import setup_mlflow

logger = logging.getLogger(__name__)

RUN_TAG = "crn.ray_run"  # the run's storage location: <storage path>/<run name>
MAX_METRICS_PER_CALL = 1000  # MLflow's log_batch limit


class MLflowReports(UserCallback):
    """Logs the workers' reports into an existing MLflow run (see the module docstring)."""

    def __init__(self, tracking_uri: str, run_id: str, run_dir: str, logged_up_to: int, total_steps: int):
        self.tracking_uri = tracking_uri
        self.total_steps = total_steps  # for the progress line: where the run will stop
        self.run_id = run_id
        self.run_dir = run_dir
        self.logged_up_to = logged_up_to  # last step already in the run (an earlier attempt's)
        self.worker_failures = 0
        self._client = None

    def client(self):
        # Created in the controller process, never pickled.
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        rank0 = metrics[0]
        losses = [record["loss"] for record in rank0.get("history", [])]
        if losses:  # the console's progress: this runs in the Train controller, whose output Ray shows
            print(progress_line(rank0["step"], self.total_steps, rank0.get("epoch", 0), sum(losses) / len(losses),
                                rank0.get("steps_per_s")), flush=True)
        try:
            self.log_report(metrics)
        except Exception as exc:  # a tracking hiccup must not stop days of training
            logger.warning("MLflow logging of step %s failed: %s", metrics[0].get("step"), exc)

    def log_report(self, metrics: list[dict[str, Any]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = []
        for step, values in sorted(average_over_ranks(metrics).items()):
            if step > self.logged_up_to:
                entries += [Metric(key, value, now, step) for key, value in values.items()]
        rank0 = metrics[0]
        for key in ("steps_per_s", "samples_per_s"):
            if key in rank0 and rank0["step"] > self.logged_up_to:
                entries.append(Metric(key, rank0[key], now, rank0["step"]))
        for start in range(0, len(entries), MAX_METRICS_PER_CALL):
            self.client().log_batch(self.run_id, metrics=entries[start : start + MAX_METRICS_PER_CALL])
        if rank0.get("image") and rank0["step"] > self.logged_up_to:
            self.copy_image(rank0["image"])
        self.logged_up_to = max(self.logged_up_to, rank0.get("step", 0))

    def copy_image(self, relative_path: str) -> None:
        fs, path = filesystem_for(uri_join(self.run_dir, relative_path))
        with tempfile.TemporaryDirectory(prefix="crn-grid-") as folder:
            local = os.path.join(folder, os.path.basename(relative_path))
            with open(local, "wb") as f:
                f.write(read_bytes(fs, path))
            self.client().log_artifact(self.run_id, local, artifact_path="images")

    def after_exception(self, run_context, worker_exceptions: dict[int, Exception]) -> None:
        self.worker_failures += 1
        try:
            self.client().set_tag(self.run_id, "crn.worker_failures", str(self.worker_failures))
        except Exception as exc:
            logger.warning("MLflow: cannot record worker failure %d: %s", self.worker_failures, exc)


def progress_line(step: int, total_steps: int, epoch: int, loss: float, steps_per_s: float | None) -> str:
    """"step 40/300 (epoch 2) loss 182.6, 0.85 steps/s, 5 min 6 s left": one line per report."""
    line = f"step {step}/{total_steps} (epoch {epoch}) loss {loss:.4g}"
    if steps_per_s:
        left = max(total_steps - step, 0) / steps_per_s
        minutes, seconds = divmod(round(left), 60)
        hours, minutes = divmod(minutes, 60)
        eta = f"{hours} h {minutes} min" if hours else f"{minutes} min {seconds} s" if minutes else f"{seconds} s"
        line += f", {steps_per_s:.2f} steps/s, {eta} left"
    return line


def average_over_ranks(metrics: list[dict[str, Any]]) -> dict[int, dict[str, float]]:
    """{step: {name: mean over ranks}} from each rank's `history` of per-step records."""
    sums: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    counts: dict[int, int] = defaultdict(int)
    for rank_metrics in metrics:
        for record in rank_metrics.get("history", []):
            step = record["step"]
            counts[step] += 1
            for key, value in record.items():
                if key != "step":
                    sums[step][key] += value
    return {step: {key: total / counts[step] for key, total in values.items()} for step, values in sums.items()}


def start_or_resume_run(experiment: str, run_dir: str, run_name: str, description: str):
    """The MLflow run of this Ray Train run: the earlier attempt's if there is one, else new.

    Returns (active run, resumed, last logged step).
    """
    import mlflow

    setup_mlflow(experiment)
    previous = mlflow.search_runs(
        experiment_names=[experiment],
        filter_string=f"tags.`{RUN_TAG}` = '{run_dir}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    if previous:
        run = start_job_run(experiment, description=description, run_id=previous[0].info.run_id)
        history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")
        return run, True, max((m.step for m in history), default=0)
    run = start_job_run(experiment, description=description, run_name=run_name, tags={RUN_TAG: run_dir})
    return run, False, 0


def finished_run(experiment: str, run_dir: str) -> tuple[str, str] | None:
    """(MLflow run id, registered version) of this Ray Train run if it finished and registered
    its model (pipeline.training.job sets `crn.registered_version` last), else None."""
    import mlflow

    runs = mlflow.search_runs(
        experiment_names=[experiment],
        filter_string=f"tags.`{RUN_TAG}` = '{run_dir}' and tags.`crn.registered_version` != ''",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    if not runs:
        return None
    return runs[0].info.run_id, runs[0].data.tags["crn.registered_version"]


def log_params(params: dict[str, Any], resumed: bool) -> None:
    """Log params; on a resumed run keep the first values and tag any that changed."""
    import mlflow

    params = {key: str(value) for key, value in params.items()}
    if resumed:
        existing = mlflow.get_run(mlflow.active_run().info.run_id).data.params
        changed = {f"crn.changed_on_resume.{k}": v for k, v in params.items() if k in existing and existing[k] != v}
        params = {k: v for k, v in params.items() if k not in existing}
        if changed:
            mlflow.set_tags(changed)
    if params:
        mlflow.log_params(params)
