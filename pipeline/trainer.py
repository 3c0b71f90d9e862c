"""Ray Train for both trainings, the CRN's (pipeline.training) and the segmenter's (pipeline.segmenter):
where a run's checkpoints go, how its workers are asked for and set up, how they report, and
how their reports reach MLflow.

    config.storage_path = storage_location(config.storage_path)  # "auto" -> <work dir>/ray_results
    config.run_name = default_run_name("segmenter-64x128", config)  # + a digest of the identity fields
    check_resources(config)
    active, resumed, logged_up_to = start_or_resume_run(config.experiment, run_dir(config), config.run_name, text)
    result = fit(train_loop, loop_config, config, run_id=..., logged_up_to=..., total_steps=..., runtime_env=...)
    version = register_once(run_id, result.checkpoint, register)

A run lives in `<storage path>/<run name>` (`run_dir`): the same command (the same identity,
so the same default name) finds its checkpoints there and resumes from the latest, and finds
its MLflow run by the tag `crn.ray_run` and logs on into it.

Who writes what in MLflow, and why:
- The driver (each training's job) starts the run (or resumes the one an earlier attempt of
  the same Ray Train run left), logs the whole config as params, and after `fit()` logs and
  registers the final checkpoint, once (`register_once`).
- While `fit()` runs the driver only waits, and `MLflowReports`, a Ray Train callback, logs
  every step's metrics, the throughput and the image grids as the workers report them. The
  callback runs in the Train controller, an actor that Ray Train pins to the driver's node,
  so a local SQLite tracking file works as well as a tracking server, and exactly one
  process writes to the store at any time (SQLite wants no more).
- Workers never talk to MLflow. Each report (`StepReports.send`) carries the per-step
  records since the last one (averaged over ranks by the callback); image grids are PNG
  files that rank 0 writes into the run's storage (`<storage>/<run>/images/`), which the
  callback copies into the run.

After a lost worker the group restarts from the last checkpoint and redoes some steps;
each step is logged once (the first time), so the curves have no duplicate points.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable

import ray.train
import ray.train.torch
import torch
from ray.train import UserCallback

from pipeline.errors import UserError
from pipeline.fs import filesystem_for, is_local, read_bytes, uri_join
from pipeline.options import AUTO, at_least, identity_of, non_negative, option, positive
from pipeline.records import start_job_run
from pipeline.runtime import lasting_output, setup_mlflow, tracking_uri, work_dir

logger = logging.getLogger(__name__)

RUN_TAG = "crn.ray_run"  # the run's storage location: <storage path>/<run name>
FINAL_CHECKPOINT_TAG = "crn.final_checkpoint"  # the checkpoint that was registered
REGISTERED_VERSION_TAG = "crn.registered_version"  # and the version it became
MAX_METRICS_PER_CALL = 1000  # MLflow's log_batch limit
WARMUP_STEPS = 2  # steps left out of the measured steady steps/s (first-call allocations)
# Ray Train's controller takes a worker's report when it polls the workers, every 2 s by
# default, and a worker's next report waits until the last one was taken (a queue of one), so
# a training that reports every few fast steps spent up to 2 s per report waiting: the demo's
# segmenter (steps of 0.1 s, a report every 2) took 18 s for 20 steps. Polled every 0.2 s the
# wait is at most that. A poll is one small call per worker; a worker that misses one is
# polled again (Ray marks it dead only after 10 minutes). Ray hands this variable from the
# driver to the controller; a value the user set is kept.
POLL_INTERVAL_ENV, POLL_INTERVAL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2"


WORKERS = "Ray Train workers"
RUN = "Ray Train run: checkpoints, resume, faults"
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_SPREAD", "STRICT_PACK")


@dataclass(kw_only=True)
class TrainingConfig:
    """The options every training shares, declared once: its workers and its run. The CRN's
    (pipeline.training.config.TrainConfig) and the segmenter's (pipeline.segmenter.config)
    configs extend it; a subclass may redeclare a field to change its default."""

    num_workers: int = option(1, "Ray Train workers (DDP ranks)", check=at_least(1), identity=True, group=WORKERS)
    use_gpu: bool = option(False, "one GPU per worker (NCCL); otherwise CPU workers with gloo", group=WORKERS)
    cpus_per_worker: float = option(1.0, "logical CPUs each worker reserves (the rest run Ray Data)", check=positive,
                                    group=WORKERS)
    placement_strategy: str = option("PACK", "how the workers are placed on the cluster's nodes (Ray placement group "
                                             "strategies): PACK fills nodes in turn, SPREAD prefers distinct nodes, "
                                             "STRICT_SPREAD puts every worker on a node of its own (a lost node then "
                                             "takes one rank with it), STRICT_PACK all on one node",
                                     choices=PLACEMENT_STRATEGIES, group=WORKERS)
    threads_per_worker: int = option(0, "torch threads per CPU worker; 0 = the node's cores divided among its workers",
                                     check=non_negative, group=WORKERS)
    run_name: str = option(AUTO, "Ray Train run name; re-running with the same name resumes; auto = from the config",
                           group=RUN)
    storage_path: str = option(AUTO, "folder or URL (s3://, abfs://, ...) for runs and checkpoints; "
                               "auto = <work dir>/ray_results",
                               group=RUN)
    checkpoint_every: int = option(500, "steps between checkpoints (one is always written at the end)",
                                   check=at_least(1), group=RUN)
    keep_checkpoints: int = option(3, "newest checkpoints kept in storage", check=at_least(1), group=RUN)
    log_every: int = option(10, "steps between reports to the driver (MLflow gets every step)", check=at_least(1),
                            group=RUN)
    max_failures: int = option(3, "restarts from the last checkpoint after a lost worker before the run fails; "
                                  "-1 = unlimited", check=at_least(-1), group=RUN)


# ---------------------------------------------------------------- where a run goes


def storage_location(storage_path: str) -> str:
    """A `--storage-path` resolved: "auto" is `<work dir>/ray_results`; local paths absolute."""
    return lasting_output(str(work_dir() / "ray_results") if storage_path == AUTO else storage_path, "--storage-path")


def default_run_name(prefix: str, config: Any) -> str:
    """`<prefix>-<digest>`, the digest of the config's identity fields (pipeline.options.identity_of):
    the same command resumes the same run and a different one starts afresh, while operational
    fields (logging cadence, threads, failure budget, where things are written) stay out."""
    digest = hashlib.sha256(json.dumps(identity_of(config), sort_keys=True).encode()).hexdigest()[:10]
    return f"{prefix}-{digest}"


def run_dir(config: TrainingConfig) -> str:
    """`<storage path>/<run name>`: where Ray Train keeps the run."""
    return uri_join(config.storage_path, config.run_name)


def storage_split(storage_path: str):
    """(pyarrow filesystem or None, path) as Ray Train takes a storage path: a URL as the
    filesystem pipeline.fs makes for it (S3 with our endpoint, Azure or GCS through fsspec)
    and the path inside it, a local folder as it is."""
    if is_local(storage_path):
        return None, storage_path
    return filesystem_for(storage_path)


# ---------------------------------------------------------------- the driver's side


def check_resources(config: TrainingConfig, extra_cpus: float = 0.0) -> None:
    """One-line error unless the cluster can hold the workers (and `extra_cpus` beside them: a scoring task's)."""
    import ray

    available = ray.cluster_resources()
    cpus, gpus = available.get("CPU", 0.0), available.get("GPU", 0.0)
    if config.use_gpu and gpus < config.num_workers:
        raise UserError(f"--use-gpu with {config.num_workers} worker(s) needs {config.num_workers} GPU(s); "
                        f"the Ray cluster has {gpus:g}")
    needed = config.num_workers * config.cpus_per_worker + extra_cpus
    if needed > cpus:
        beside = f" + {extra_cpus:g} for scoring (--eval-cpus)" if extra_cpus else ""
        raise UserError(f"{config.num_workers} worker(s) x {config.cpus_per_worker:g} CPU{beside} need {needed:g} "
                        f"CPUs; the Ray cluster has {cpus:g} (lower --num-workers or --cpus-per-worker)")
    if config.placement_strategy == "STRICT_SPREAD":
        # Needs that many nodes, not only the total: without them Ray would wait for nodes
        # that never come (until the worker group's start timeout).
        per_worker = {"CPU": config.cpus_per_worker, **({"GPU": 1.0} if config.use_gpu else {})}
        fitting = sum(all(node["Resources"].get(k, 0.0) >= v for k, v in per_worker.items())
                      for node in ray.nodes() if node["Alive"])
        if fitting < config.num_workers:
            wanted = " and ".join(f"{v:g} {k}" for k, v in per_worker.items())
            raise UserError(f"--placement-strategy STRICT_SPREAD puts each of {config.num_workers} worker(s) on a node "
                            f"of its own, with {wanted}; the Ray cluster has {fitting} such node(s)")


def torch_trainer_class():
    """Ray's TorchTrainer without its placement-group cleaner.

    Ray Train 2.60 starts a detached actor per run that removes the run's placement group
    when the state API says the controller is gone; on a loaded machine that query can come
    back empty for a live controller, and the cleaner then removes the placement group under
    running workers ("Destroying worker since its placement group was removed"). The group
    is the controller's own (created without a lifetime), so Ray removes it when the
    controller dies anyway (docs/stack-facts.md#ray-train).
    """
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

    class Trainer(TorchTrainer):
        def _create_default_callbacks(self):
            return [callback for callback in super()._create_default_callbacks()
                    if not isinstance(callback, PlacementGroupCleanerCallback)]

    return Trainer


def fit(train_loop: Callable[[dict], Any], loop_config: dict, config: TrainingConfig, *, run_id: str,
        logged_up_to: int, total_steps: int, runtime_env: dict | None, datasets: dict | None = None,
        checkpoint_watcher: Any = None):
    """Start the workers, run `train_loop(loop_config)` on each to the end, with `MLflowReports`
    logging into the MLflow run `run_id`; returns Ray Train's Result, which has a checkpoint.

    `runtime_env` is the workers' Ray runtime environment (pipeline.runtime.cpu_worker_runtime_env
    or None); `datasets` are Ray Data datasets the workers read with `get_dataset_shard`;
    `checkpoint_watcher` (pipeline.training.scores.CheckpointScoring) hears of every report
    after it is logged.
    """
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig

    storage_fs, storage_path = storage_split(config.storage_path)
    os.environ.setdefault(POLL_INTERVAL_ENV, POLL_INTERVAL_S)
    trainer = torch_trainer_class()(
        train_loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=config.num_workers,
            use_gpu=config.use_gpu,
            placement_strategy=config.placement_strategy,
            resources_per_worker={"CPU": config.cpus_per_worker, **({"GPU": 1} if config.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=config.run_name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=config.keep_checkpoints),
            callbacks=[MLflowReports(tracking_uri(), run_id, run_dir(config), logged_up_to, total_steps,
                                     checkpoint_watcher)],
            worker_runtime_env=runtime_env,
            # Ray Train's own INFO lines (resources requested, worker group started, process group
            # set up, each checkpoint's path) stay in its log files under the Ray session's logs;
            # the console gets its warnings and our progress lines (MLflowReports).
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
        datasets=datasets,
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise UserError(f"run {run_dir(config)} ended without a checkpoint")
    return result


# ---------------------------------------------------------------- each worker's side


def quiet_report_log() -> None:
    """Ray Train logs every `report` with its whole metrics dict at INFO, which here holds the
    per-step history of a window: a screenful per report on the console. That logger is
    named by its file's path; a later Ray that moves the file only makes this a no-op."""
    path = Path(ray.train.__file__).parent / "v2" / "_internal" / "execution" / "context.py"
    logging.getLogger(str(path)).setLevel(logging.WARNING)


def worker_device(use_gpu: bool, threads_per_worker: int) -> torch.device:
    """This worker's device. A CPU worker first sets its torch threads: `threads_per_worker`,
    or the node's cores divided among the workers on it (torch's default, a thread per core in
    every worker, would put several spin-waiting threads on each core)."""
    if use_gpu:
        return ray.train.torch.get_device()
    workers_here = ray.train.get_context().get_local_world_size()
    torch.set_num_threads(threads_per_worker or max(1, os.cpu_count() // workers_here))
    return torch.device("cpu")


class StepReports:
    """A worker's reports to the driver: the per-step records since the last report (`history`,
    which `MLflowReports` logs step by step), the steps per second between reports, and a
    checkpoint when one is due. Every rank reports at the same steps; rank 0 writes the checkpoints."""

    def __init__(self, rank: int, samples_per_step: int, start_step: int):
        self.rank = rank
        self.samples_per_step = samples_per_step  # over all ranks
        self.history: list[dict] = []  # per-step records since the last report
        self.last_checkpoint_step = -1
        self.window_start = (time.perf_counter(), start_step)  # (time, step) of the last report
        self.steps_seen = 0
        self.warm = self.latest = None  # (time, step) after WARMUP_STEPS, and now

    def record(self, step: int, values: dict[str, float]) -> None:
        self.history.append({"step": step, **values})
        self.steps_seen += 1
        self.latest = (time.perf_counter(), step)
        if self.steps_seen == WARMUP_STEPS:
            self.warm = self.latest

    def steady_steps_per_s(self) -> float:
        """Steps per second after the warm-up steps, reports included (0 if too few steps)."""
        if self.warm is None or self.latest[1] == self.warm[1]:
            return 0.0
        return (self.latest[1] - self.warm[1]) / (self.latest[0] - self.warm[0])

    def send(self, step: int, epoch: int, write_checkpoint: Callable[[Path], None] | None = None,
             **extra: Any) -> None:
        """`ray.train.report` of the steps since the last report and `extra`; with a checkpoint
        (`checkpoint_<step>`) when `write_checkpoint` is given, which rank 0 calls with a
        temporary folder that Ray Train then copies into the run's storage."""
        now = time.perf_counter()
        start_time, start_step = self.window_start
        metrics = {"step": step, "epoch": epoch, "history": self.history, **extra}
        if step > start_step:
            metrics["steps_per_s"] = (step - start_step) / (now - start_time)
            metrics["samples_per_s"] = metrics["steps_per_s"] * self.samples_per_step
        with tempfile.TemporaryDirectory(prefix="crn-ckpt-") as folder:
            checkpoint = None
            if write_checkpoint is not None and self.rank == 0:
                write_checkpoint(Path(folder))
                checkpoint = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=checkpoint,
                             checkpoint_dir_name=f"checkpoint_{step:08d}" if write_checkpoint else None)
        if write_checkpoint is not None:
            self.last_checkpoint_step = step
        self.history = []
        self.window_start = (now, step)  # this report's own time counts in the next window


# ---------------------------------------------------------------- MLflow


class MLflowReports(UserCallback):
    """Logs the workers' reports into an existing MLflow run (see the module docstring)."""

    def __init__(self, tracking_uri: str, run_id: str, run_dir: str, logged_up_to: int, total_steps: int,
                 checkpoint_watcher: Any = None):
        self.tracking_uri = tracking_uri
        self.checkpoint_watcher = checkpoint_watcher  # after_report(client, run_id, step, checkpoint), or None
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
        if self.checkpoint_watcher is not None:
            try:
                self.checkpoint_watcher.after_report(self.client(), self.run_id, rank0.get("step", 0), checkpoint)
            except Exception as exc:  # nor must its scores
                logger.warning("scores after step %s: %s", rank0.get("step"), exc)

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
    if previous := latest_run(experiment, f"tags.`{RUN_TAG}` = '{run_dir}'"):
        run = start_job_run(experiment, description=description, run_id=previous.info.run_id)
        history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")
        return run, True, max((m.step for m in history), default=0)
    run = start_job_run(experiment, description=description, run_name=run_name, tags={RUN_TAG: run_dir})
    return run, False, 0


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


def register_once(run_id: str, checkpoint, register: Callable[[], str]) -> str:
    """The registered version of the run's final checkpoint: `register()` logs and registers it
    (and returns the version) the first time; a re-run of a finished run ends on the same
    checkpoint and gets the version recorded then, registering nothing."""
    import mlflow

    tags = mlflow.get_run(run_id).data.tags
    if tags.get(FINAL_CHECKPOINT_TAG) == checkpoint.path:
        return tags[REGISTERED_VERSION_TAG]
    version = register()
    mlflow.set_tags({FINAL_CHECKPOINT_TAG: checkpoint.path, REGISTERED_VERSION_TAG: version})
    return version


def finished_run(experiment: str, run_dir: str) -> tuple[str, str] | None:
    """(MLflow run id, registered version) of this Ray Train run if it finished and registered
    its model (`register_once`), else None."""
    run = latest_run(experiment, f"tags.`{RUN_TAG}` = '{run_dir}' and tags.`{REGISTERED_VERSION_TAG}` != ''")
    return None if run is None else (run.info.run_id, run.data.tags[REGISTERED_VERSION_TAG])


def latest_run(experiment: str, filter_string: str):
    """The latest MLflow run of `experiment` that matches `filter_string`, or None."""
    import mlflow

    runs = mlflow.search_runs(experiment_names=[experiment], filter_string=filter_string,
                              order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
    return runs[0] if runs else None
