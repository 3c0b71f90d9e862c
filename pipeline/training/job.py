"""The training job: Ray Train workers over the store, one MLflow run, a registered model.

    outcome = run(parse_train_config(argv))       # what jobs/train.py does

In order:
1. The plan (pipeline.training.plan): every check that needs no worker, and the recipe row.
   Then the Ray cluster must have the CPUs (and GPUs) the workers ask for.
2. The MLflow run: resumed if an earlier attempt of this Ray Train run left one, else new;
   the whole config as params (pipeline.training.tracking).
3. `TorchTrainer.fit()`: the loop of pipeline.training.loop on every worker, DDP (gloo on
   CPU, NCCL on GPUs); each worker reads its rows of every epoch's permutation from the
   store by index (pipeline.training.order, pipeline.data.rows); checkpoints in
   `<storage>/<run name>/`.
   The same command (same run name) resumes from the latest checkpoint; a lost worker
   restarts the group from it, up to `--max-failures` times.
4. The final checkpoint is logged to the run and registered as `crn-<dataset>-<HxW>` with
   the alias `candidate` (pipeline.registry.models); the final layer weights and any
   recalibration's measured means become tags.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pipeline.data.store import TRAIN_SPLIT, open_store
from pipeline.errors import UserError
from pipeline.fs import filesystem_for, is_s3
from pipeline.records import log_store_input
from pipeline.runtime import CPU_WORKER_MALLOC_ENV, init_ray, tracking_uri
from pipeline.training.config import TrainConfig
from pipeline.training.loop import CHECKPOINT_FILE, train_loop_per_worker
from pipeline.training.plan import TrainPlan, make_plan


@dataclass
class TrainOutcome:
    run_id: str  # MLflow run
    model_version: str  # registered version of `model_name`
    checkpoint: Any  # ray.train.Checkpoint of the final state
    final: dict  # the loop's return value on rank 0 (step, epoch, resumed_from_step, steps_per_s, ...)


def check_resources(config: TrainConfig) -> None:
    """One-line error unless the cluster can hold the workers."""
    import ray

    available = ray.cluster_resources()
    cpus, gpus = available.get("CPU", 0.0), available.get("GPU", 0.0)
    if config.use_gpu and gpus < config.num_workers:
        raise UserError(f"--use-gpu with {config.num_workers} worker(s) needs {config.num_workers} GPU(s); "
                        f"the Ray cluster has {gpus:g}")
    needed = config.num_workers * config.cpus_per_worker
    if needed > cpus:
        raise UserError(f"{config.num_workers} worker(s) x {config.cpus_per_worker:g} CPU need {needed:g} CPUs; "
                        f"the Ray cluster has {cpus:g} (lower --num-workers or --cpus-per-worker)")
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


def warn_if_random_vgg(plan: TrainPlan) -> None:
    if plan.vgg_source == "random":
        bar = "!" * 78
        print(f"{bar}\n!! WARNING: the VGG-19 loss network has RANDOM weights (--vgg-weights random).\n"
              f"!! The loss is not the paper's perceptual loss; use this only for tests and smoke runs.\n{bar}",
              file=sys.stderr)


def fit(plan: TrainPlan, run_id: str, logged_up_to: int, train_loop: Callable[[dict], dict]):
    """Start the workers and run `train_loop` to the end; returns Ray Train's Result."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipeline.training.tracking import MLflowReports

    config = plan.config
    # Ray Train takes S3 as a pyarrow filesystem with our endpoint and a bucket/prefix path.
    storage_fs, storage_path = (None, config.storage_path)
    if is_s3(config.storage_path):
        storage_fs, storage_path = filesystem_for(config.storage_path)
    # Earlier-stage weights go through the object store once, not into every worker's config.
    init_ref = ray.put(plan.init_weights) if plan.init_weights else None
    print(f"training: starting {config.num_workers} worker(s); a progress line every {config.log_every} steps "
          f"of {plan.total_steps}", flush=True)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=plan.for_workers(init_ref).to_dict(),
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
            callbacks=[MLflowReports(tracking_uri(), run_id, plan.run_dir, logged_up_to, plan.total_steps)],
            # CPU workers reuse the memory each step frees instead of mapping it afresh
            # (pipeline.runtime.CPU_WORKER_MALLOC_ENV: a crn-mid step on 2 cores, 1.5-1.9 -> 1.4-1.6 s).
            worker_runtime_env=None if config.use_gpu else {"env_vars": CPU_WORKER_MALLOC_ENV},
        ),
    )
    return trainer.fit()


def run(config: TrainConfig, train_loop: Callable[[dict], dict] = train_loop_per_worker) -> TrainOutcome:
    """The whole job for a parsed config (not a dry run: see jobs/train.py).

    `train_loop` is what every worker runs; tests wrap the real loop to inject faults.
    """
    plan = make_plan(config)
    init_ray(dashboard=True)  # Ray Train's state queries need it (pipeline.runtime.init_ray)
    check_resources(plan.config)
    warn_if_random_vgg(plan)

    import mlflow

    from pipeline.registry.models import log_and_register
    from pipeline.training.tracking import log_params, start_or_resume_run

    description = (f"{plan.config.preset} ({plan.config.resolution}, K={plan.model_config.num_outputs}) on "
                   f"{plan.dataset} ({plan.config.store}), {plan.config.epochs} epoch(s) of {plan.steps_per_epoch} "
                   f"step(s) per worker, {plan.config.num_workers} worker(s)")
    active, resumed, logged_up_to = start_or_resume_run(plan.config.experiment, plan.run_dir, plan.config.run_name,
                                                        description)
    with active:
        log_params(plan.describe(), resumed)
        if not resumed:
            log_store_input(plan.config.store, open_store(plan.config.store), TRAIN_SPLIT)
        mlflow.set_tags({"crn.vgg_weights": plan.vgg_source.split(":")[0], "crn.dataset": plan.dataset,
                         "crn.preset": plan.config.preset, "crn.vgg_input": plan.vgg_convention,
                         "crn.layer_weights_rule": plan.layer_weights_rule})
        result = fit(plan, active.info.run_id, logged_up_to, train_loop)
        if result.checkpoint is None:
            raise UserError(f"run {plan.run_dir} ended without a checkpoint")
        tags = mlflow.get_run(active.info.run_id).data.tags
        if tags.get("crn.final_checkpoint") == result.checkpoint.path:  # a re-run of a finished run
            version = tags["crn.registered_version"]
        else:
            with result.checkpoint.as_directory() as folder:
                version = log_and_register(Path(folder) / CHECKPOINT_FILE, plan.config.model_name, plan.config.alias)
        final = result.return_value or {}
        mlflow.set_tags({"crn.final_checkpoint": result.checkpoint.path, "crn.registered_version": version})
        if "loss_weights" in final:  # a re-run of a finished run has no return value
            # resumed_from_step: where the last attempt started (0: from scratch), after a lost
            # worker or node, or a re-run of the same command; the run's curves do not show it.
            mlflow.set_tags({"crn.final_layer_weights": json.dumps(final["loss_weights"]),
                             "crn.recalibration_means": json.dumps(final["recalibration_means"]),
                             "crn.resumed_from_step": str(final["resumed_from_step"])})
    print(f"trained {plan.config.run_name} to step {final.get('step', '?')} (epoch {final.get('epoch', '?')}); "
          f"registered models:/{plan.config.model_name}/{version} as @{plan.config.alias}; "
          f"MLflow run {active.info.run_id}")
    return TrainOutcome(run_id=active.info.run_id, model_version=version, checkpoint=result.checkpoint, final=final)


