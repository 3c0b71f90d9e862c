"""The training job: Ray Train workers over the store, one MLflow run, a registered model.

    outcome = run(parse_train_config(argv))       # what jobs/train.py does

In order:
1. The plan (pipeline.training.plan): every check that needs no worker, and the recipe row.
   Then the Ray cluster must have the CPUs (and GPUs) the workers ask for.
2. The MLflow run: resumed if an earlier attempt of this Ray Train run left one, else new;
   the whole config as params (pipeline.trainer, which both trainings share).
3. `TorchTrainer.fit()` (pipeline.trainer.fit): the loop of pipeline.training.loop on every worker, DDP (gloo on
   CPU, NCCL on GPUs); each worker reads its rows of every epoch's permutation from the
   store by index (pipeline.training.order, pipeline.data.rows); checkpoints in
   `<storage>/<run name>/`.
   The same command (same run name) resumes from the latest checkpoint; a lost worker
   restarts the group from it, up to `--max-failures` times.
   With `--eval-every`, each due checkpoint is scored meanwhile by a task beside the workers
   (pipeline.training.scores); the job waits for the last scores after `fit()`.
4. The final checkpoint (or with `--select-by miou|fid` the best scored one) is logged to
   the run and registered as `crn-<dataset>-<HxW>` with the alias `candidate`
   (pipeline.registry.models); the final layer weights and any recalibration's measured
   means become tags.
"""
from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pipeline import trainer
from pipeline.data.store import TRAIN_SPLIT, open_store
from pipeline.records import log_store_input
from pipeline.runtime import cpu_worker_runtime_env, init_ray
from pipeline.training import scores
from pipeline.training.config import TrainConfig
from pipeline.training.loop import CHECKPOINT_FILE, train_loop_per_worker
from pipeline.training.plan import TrainPlan, make_plan
from pipeline.training.scores import CheckpointScoring


@dataclass
class TrainOutcome:
    run_id: str  # MLflow run
    model_version: str  # registered version of `model_name`
    checkpoint: Any  # ray.train.Checkpoint of the final state
    final: dict  # the loop's return value on rank 0 (step, epoch, resumed_from_step, steps_per_s, ...)


def warn_if_random_vgg(plan: TrainPlan) -> None:
    if plan.vgg_source == "random":
        bar = "!" * 78
        print(f"{bar}\n!! WARNING: the VGG-19 loss network has RANDOM weights (--vgg-weights random).\n"
              f"!! The loss is not the paper's perceptual loss; use this only for tests and smoke runs.\n{bar}",
              file=sys.stderr)


def fit(plan: TrainPlan, run_id: str, logged_up_to: int, train_loop: Callable[[dict], dict],
        scoring: CheckpointScoring | None = None):
    """Start the workers and run `train_loop` to the end; returns Ray Train's Result."""
    import ray

    config = plan.config
    # Earlier-stage weights go through the object store once, not into every worker's config.
    init_ref = ray.put(plan.init_weights) if plan.init_weights else None
    print(f"training: starting {config.num_workers} worker(s); a progress line every {config.log_every} steps "
          f"of {plan.total_steps}", flush=True)
    # CPU workers reuse the memory each step frees instead of mapping it afresh
    # (pipeline.runtime.CPU_WORKER_MALLOC_ENV: a crn-mid step on 2 cores, 1.5-1.9 -> 1.4-1.6 s).
    return trainer.fit(train_loop, plan.for_workers(init_ref).to_dict(), config, run_id=run_id,
                       logged_up_to=logged_up_to, total_steps=plan.total_steps,
                       runtime_env=cpu_worker_runtime_env(config.use_gpu), checkpoint_watcher=scoring)


def run(config: TrainConfig, train_loop: Callable[[dict], dict] = train_loop_per_worker) -> TrainOutcome:
    """The whole job for a parsed config (not a dry run: see jobs/train.py).

    `train_loop` is what every worker runs; tests wrap the real loop to inject faults.
    """
    plan = make_plan(config)
    spec = scores.scoring_spec(plan.config, plan.run_dir) if plan.config.eval_every else None
    init_ray(dashboard=True)  # Ray Train's state queries need it (pipeline.runtime.init_ray)
    trainer.check_resources(plan.config, extra_cpus=plan.config.eval_cpus if spec else 0.0)
    warn_if_random_vgg(plan)

    import mlflow

    description = (f"{plan.config.preset} ({plan.config.resolution}, K={plan.model_config.num_outputs}) on "
                   f"{plan.dataset} ({plan.config.store}), {plan.config.epochs} epoch(s) of {plan.steps_per_epoch} "
                   f"step(s) per worker, {plan.config.num_workers} worker(s)")
    active, resumed, logged_up_to = trainer.start_or_resume_run(plan.config.experiment, plan.run_dir,
                                                                plan.config.run_name, description)
    with active:
        trainer.log_params(plan.describe(), resumed)
        if not resumed:
            log_store_input(plan.config.store, open_store(plan.config.store), TRAIN_SPLIT)
        mlflow.set_tags({"crn.vgg_weights": plan.vgg_source.split(":")[0], "crn.dataset": plan.dataset,
                         "crn.preset": plan.config.preset, "crn.vgg_input": plan.vgg_convention,
                         "crn.layer_weights_rule": plan.layer_weights_rule})
        scoring = None
        if spec is not None:
            scoring = CheckpointScoring.start(plan.config, spec, active.info.run_id, plan.total_steps)
        try:
            result = fit(plan, active.info.run_id, logged_up_to, train_loop, scoring)
        except BaseException:
            if scoring is not None:  # the scores already in are logged, the rest listed as unfinished
                with contextlib.suppress(Exception):  # the training's own error is the one to see
                    scoring.finish(mlflow.MlflowClient(), active.info.run_id, wait_s=0)
            raise
        if scoring is not None:
            scoring.finish(mlflow.MlflowClient(), active.info.run_id, plan.config.eval_wait_s)
        version = register_selected(plan, active.info.run_id, result.checkpoint)
        final = result.return_value or {}
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


@dataclass(frozen=True)
class KeptCheckpoint:
    """A scored checkpoint's copy (pipeline.training.scores), as `register_once` keys it: by path."""

    path: str


def register_selected(plan: TrainPlan, run_id: str, final) -> str:
    """Register the final checkpoint, or with `--select-by miou|fid` the best scored one
    (tagged on the version: its step, the metric and the score); the run says which."""
    import mlflow

    from pipeline.fs import filesystem_for, read_bytes, uri_join
    from pipeline.registry.models import log_and_register

    config = plan.config
    best = scores.selected_step(run_id, config.select_by) if config.select_by != scores.LAST else None
    if config.select_by != scores.LAST and best is None:
        mlflow.set_tag("crn.selection", f"no checkpoint has eval.{config.select_by}: the last one is registered")
    if best is None:
        def register() -> str:
            with final.as_directory() as folder:
                return log_and_register(Path(folder) / CHECKPOINT_FILE, config.model_name, config.alias)

        return trainer.register_once(run_id, final, register)

    step, value = best
    kept = scores.kept_path(uri_join(plan.run_dir, scores.KEPT_DIR), step)

    def register_best() -> str:
        fs, path = filesystem_for(kept)
        with tempfile.TemporaryDirectory(prefix="crn-selected-") as folder:
            local = Path(folder) / CHECKPOINT_FILE
            local.write_bytes(read_bytes(fs, path))
            version = log_and_register(local, config.model_name, config.alias)
        tags = {"crn.selected_step": str(step), "crn.selected_by": f"eval.{config.select_by}",
                f"crn.selected.eval.{config.select_by}": repr(value)}
        client = mlflow.MlflowClient()
        for key, text in tags.items():
            client.set_model_version_tag(config.model_name, version, key, text)
        mlflow.set_tags(tags)
        return version

    return trainer.register_once(run_id, KeptCheckpoint(kept), register_best)
