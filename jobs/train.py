"""Train a CRN from a preprocessed store with Ray Train; track it in MLflow; register the model.

    ray job submit -- python jobs/train.py --store s3://bucket/cityscapes --num-workers 8 --use-gpu
    python jobs/train.py --store work/toy-store --preset crn-tiny --vgg-weights random --steps 50
    python -m jobs.train --store ... --dry-run          # print the resolved configuration

In order:
1. Driver-side checks, before any worker starts, each a one-line error: the store exists
   and holds photographs, the resolution is in it and is the preset's top resolution, there
   are enough samples for one step per worker, the VGG weights resolve (ImageNet weights
   must be in torchvision's cache: nothing is downloaded), an earlier stage (`--init-from`)
   has the store's label schema and fitting modules, and the Ray cluster has the CPUs (and
   GPUs) the workers ask for, with at least one CPU left for Ray Data.
2. The MLflow run: resumed if an earlier attempt of this Ray Train run left one, else new;
   the whole config as params (jobs/train_tracking.py).
3. `TorchTrainer.fit()`: the loop of jobs/train_loop.py on every worker, DDP (gloo on CPU,
   NCCL on GPUs), the store's training rows as Ray Data shards (held decoded in the object
   store when they fit, `--cache-data`), checkpoints in `<storage>/<run name>/`. The same command (same run name)
   resumes from the latest checkpoint; a lost worker restarts the group from it, up to
   `--max-failures` times.
4. The final checkpoint is logged to the run and registered as `crn-<dataset>-<HxW>` with
   the alias `candidate` (jobs/model_registry.py).
"""
from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # `python jobs/train.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from crn.config import CRNConfig, resolution_name
from crn.losses import LAYER_WEIGHTS
from crn.presets import make_config
from crn.vgg import VGG19Features, VGGWeightsError
from jobs import train_stages
from jobs.common import UserError, entrypoint, init_ray, setup_mlflow, tracking_uri
from jobs.train_config import TrainConfig, config_from_argv, resolve
from pipeline.fs import filesystem_for, is_s3, uri_join
from pipeline.schema import check_schema_match
from pipeline.store import Store, open_store

TRAIN_SPLIT = "train"


@dataclass
class TrainPlan:
    """Everything the driver worked out before starting workers."""

    config: TrainConfig  # resolved: no "auto" left
    model_config: CRNConfig
    label_schema: dict
    dataset: str  # data set name, for the registered model's name
    train_samples: int
    steps_per_epoch: int  # per rank, the same on every rank
    train_modules: list[str]
    vgg_source: str
    run_dir: str  # <storage>/<run name>, where Ray Train keeps this run
    init_weights: dict | None  # earlier-stage tensors the new model takes over

    def describe(self) -> dict[str, Any]:
        """The resolved configuration as printed by --dry-run and logged as MLflow params."""
        return {
            **asdict(self.config),
            "model.widths": list(self.model_config.widths),
            "model.num_classes": self.model_config.num_classes,
            "model.num_outputs": self.model_config.num_outputs,
            "model.train_modules": ",".join(self.train_modules),
            "model.init_modules": len({k.split(".")[1] for k in self.init_weights}) if self.init_weights else 0,
            "data.dataset": self.dataset,
            "data.schema": self.label_schema["name"],
            "data.train_samples": self.train_samples,
            "data.steps_per_epoch": self.steps_per_epoch,
            "loss.layer_weights": list(LAYER_WEIGHTS[self.config.loss_weights]),
            "vgg.weights_source": self.vgg_source,
            "run_dir": self.run_dir,
        }


@dataclass
class TrainOutcome:
    run_id: str  # MLflow run
    model_version: str  # registered version of `model_name`
    checkpoint: Any  # ray.train.Checkpoint of the final state
    final: dict  # the loop's return value on rank 0 (step, epoch, resumed_from_step, steps_per_s, ...)


def make_plan(config: TrainConfig) -> TrainPlan:
    """Resolve the config and check everything that can be checked without Ray."""
    config = resolve(config)
    store = open_store(config.store)  # StoreError (one line) if missing
    schema = store.schema
    # The preset takes its label channels L from the store's schema; its top resolution is fixed.
    model_config = make_config(config.preset, num_classes=schema.num_classes, num_outputs=config.num_outputs)
    top = resolution_name(model_config.top_resolution)
    if config.resolution != top:
        raise UserError(f"--resolution {config.resolution}: preset {config.preset} makes {top} images; "
                        f"train it at {top} (store {config.store} has {', '.join(store.resolutions)})")
    if top not in store.resolutions:
        raise UserError(f"store {config.store} has no {top} data for preset {config.preset} "
                        f"(it has {', '.join(store.resolutions)}; preprocess with --resolutions ...,{top})")
    train_modules = train_stages.parse_train_modules(config.train_modules, model_config)
    if not store.has_photos:
        raise UserError(f"store {config.store} holds label maps only; training needs photographs")
    if TRAIN_SPLIT not in store.splits:
        raise UserError(f"store {config.store} has no '{TRAIN_SPLIT}' split (it has {', '.join(store.splits)})")
    samples = store.count(TRAIN_SPLIT)
    steps_per_epoch = samples // config.num_workers // config.batch_size
    if steps_per_epoch < 1:
        raise UserError(f"store {config.store} has {samples} training samples: too few for "
                        f"{config.num_workers} worker(s) x batch {config.batch_size}")
    try:
        vgg_source = VGG19Features(config.vgg_weights).weights_source
    except VGGWeightsError as exc:
        raise UserError(str(exc)) from None
    init_weights = None
    if config.init_from:
        from jobs.model_registry import load_model

        earlier = load_model(config.init_from)
        check_schema_match(schema.to_dict(), earlier.checkpoint["label_schema"],
                           f"store {config.store} vs --init-from {config.init_from}")
        init_weights = train_stages.earlier_stage_weights(earlier.model.state_dict(), model_config, config.init_from)
    dataset = dataset_name(store)
    if config.model_name == "auto":
        config = dataclasses.replace(config, model_name=f"crn-{dataset}-{top}")
    return TrainPlan(
        config=config, model_config=model_config, label_schema=schema.to_dict(), dataset=dataset,
        train_samples=samples, steps_per_epoch=steps_per_epoch,
        train_modules=train_modules,
        vgg_source=vgg_source, run_dir=uri_join(config.storage_path, config.run_name), init_weights=init_weights,
    )


def dataset_name(store: Store) -> str:
    """The data set's name: the manifest's if it has one, else the source folder's, else the store's."""
    source = (store.manifest.get("source") or {}).get("uri", "")
    name = store.manifest.get("name") or Path(source.rstrip("/")).name or Path(store.uri.rstrip("/")).name
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in str(name)).strip("-") or "store"


def check_resources(config: TrainConfig) -> None:
    """One-line error unless the cluster can hold the workers and still feed them."""
    import ray

    available = ray.cluster_resources()
    cpus, gpus = available.get("CPU", 0.0), available.get("GPU", 0.0)
    if config.use_gpu and gpus < config.num_workers:
        raise UserError(f"--use-gpu with {config.num_workers} worker(s) needs {config.num_workers} GPU(s); "
                        f"the Ray cluster has {gpus:g}")
    needed = config.num_workers * config.cpus_per_worker
    # Ray Data's read and decode tasks need a CPU of their own, or the workers wait forever.
    if needed + 1 > cpus:
        raise UserError(f"{config.num_workers} worker(s) x {config.cpus_per_worker:g} CPU plus 1 CPU for Ray Data "
                        f"need {needed + 1:g} CPUs; the Ray cluster has {cpus:g} "
                        f"(lower --num-workers or --cpus-per-worker)")


def warn_if_random_vgg(plan: TrainPlan) -> None:
    if plan.vgg_source == "random":
        bar = "!" * 78
        print(f"{bar}\n!! WARNING: the VGG-19 loss network has RANDOM weights (--vgg-weights random).\n"
              f"!! The loss is not the paper's perceptual loss; use this only for tests and smoke runs.\n{bar}",
              file=sys.stderr)


def cache_training_data(plan: TrainPlan) -> bool:
    """--cache-data: yes, no, or (auto) when the run spans several epochs and the decoded data
    fits in a quarter of the object store (a single pass reads the store once either way)."""
    import mlflow
    import ray

    config = plan.config
    if config.cache_data == "auto":
        epochs = config.epochs if not config.steps else min(config.epochs, -(-config.steps // plan.steps_per_epoch))
        height, width = plan.model_config.top_resolution
        data_bytes = plan.train_samples * height * width * 4  # uint8 label + RGB photo
        cache = epochs > 1 and data_bytes <= ray.cluster_resources().get("object_store_memory", 0) / 4
    else:
        cache = config.cache_data == "yes"
    mlflow.set_tag("crn.data_cached", str(cache))
    return cache


def fit(plan: TrainPlan, run_id: str, logged_up_to: int):
    """Start the workers and run the loop to the end; returns Ray Train's Result."""
    import ray
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from jobs.train_loop import train_loop_per_worker
    from jobs.train_tracking import MLflowReports

    config = plan.config
    # Ray Train takes S3 as a pyarrow filesystem with our endpoint and a bucket/prefix path.
    storage_fs, storage_path = (None, config.storage_path)
    if is_s3(config.storage_path):
        storage_fs, storage_path = filesystem_for(config.storage_path)
    store = open_store(config.store)
    # Only the pixel columns travel to the workers (sample ids are strings, which torch cannot batch).
    train_data = store.dataset(TRAIN_SPLIT, config.resolution).select_columns(["label", "photo"])
    # Preserving Ray Data's order makes the split across ranks the same every epoch and on re-runs.
    train_data.context.execution_options.preserve_order = True
    ingest = DataConfig.default_ingest_options()
    ingest.preserve_order = True
    if cache_training_data(plan):
        # Each epoch re-runs the dataset: from memory that takes a moment, from the store a
        # read and decode of every sample (many seconds per epoch for a small data set).
        train_data = train_data.materialize()
    loop_config = {
        "config": asdict(config),
        "model_config": plan.model_config.to_dict(),
        "label_schema": plan.label_schema,
        "loss_weights": list(LAYER_WEIGHTS[config.loss_weights]),
        "train_modules": plan.train_modules,
        "steps_per_epoch": plan.steps_per_epoch,
        "run_dir": plan.run_dir,
        "init_weights": ray.put(plan.init_weights) if plan.init_weights else None,
    }
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=config.num_workers,
            use_gpu=config.use_gpu,
            resources_per_worker={"CPU": config.cpus_per_worker, **({"GPU": 1} if config.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=config.run_name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=config.keep_checkpoints),
            callbacks=[MLflowReports(tracking_uri(), run_id, plan.run_dir, logged_up_to)],
        ),
        datasets={TRAIN_SPLIT: train_data},
        dataset_config=DataConfig(execution_options=ingest),
    )
    return trainer.fit()


def run(config: TrainConfig) -> TrainOutcome | None:
    """The whole job for a parsed config; None for a dry run."""
    plan = make_plan(config)
    if config.dry_run:
        print(json.dumps(plan.describe(), indent=1))
        return None
    init_ray(dashboard=True)  # Ray Train's state queries need it (jobs.common.init_ray)
    check_resources(plan.config)
    warn_if_random_vgg(plan)

    import mlflow

    from jobs.model_registry import log_and_register
    from jobs.train_loop import CHECKPOINT_FILE
    from jobs.train_tracking import log_params, start_or_resume_run

    setup_mlflow(plan.config.experiment)
    active, resumed, logged_up_to = start_or_resume_run(plan.config.experiment, plan.run_dir, plan.config.run_name)
    with active:
        log_params(plan.describe(), resumed)
        mlflow.set_tags({"crn.vgg_weights": plan.vgg_source.split(":")[0], "crn.dataset": plan.dataset,
                         "crn.preset": plan.config.preset})
        result = fit(plan, active.info.run_id, logged_up_to)
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
    print(f"trained {plan.config.run_name} to step {final.get('step', '?')} (epoch {final.get('epoch', '?')}); "
          f"registered models:/{plan.config.model_name}/{version} as @{plan.config.alias}; "
          f"MLflow run {active.info.run_id}")
    return TrainOutcome(run_id=active.info.run_id, model_version=version, checkpoint=result.checkpoint, final=final)


def main(argv: Sequence[str] | None = None) -> int:
    from ray.train import TrainingFailedError

    try:
        run(config_from_argv(argv))
    except TrainingFailedError as exc:  # workers failed more than --max-failures times
        print(f"{exc}\nerror: training failed; re-run the same command to resume from its last checkpoint",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint(main)(sys.argv[1:]))
