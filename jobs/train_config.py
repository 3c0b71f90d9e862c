"""The training job's configuration: one dataclass, built from the command line.

    config = config_from_argv(["--store", "work/toy-store", "--preset", "crn-tiny"])

Defaults follow the published recipe (crn-spec.md section 4): Adam at 1e-4, batch 1, the
preset's K (9 outputs and the diversity loss at 256p, K=1 above), 200 / 20 / 5 epochs at
256p / 512p / 1024p. Flags left at "auto" (resolution, epochs, loss weights, run name,
storage) are filled in by `resolve()`; `--dry-run` prints the result. The config travels to
the Ray workers as a plain dict (`asdict`) and is rebuilt there with `TrainConfig(**d)`.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from crn.config import resolution_name
from crn.losses import LAYER_WEIGHTS
from crn.presets import PRESETS, make_config
from jobs.common import UserError, work_dir

# Epochs of the published schedule, by the height of the model's top resolution; the CPU
# presets (top 32..128 rows) follow the 256p schedule.
RECIPE_EPOCHS = {256: 200, 512: 20, 1024: 5}
PRECISIONS = ("fp32", "bf16")
CACHE_CHOICES = ("auto", "yes", "no")
# The layer-weight row the authors used at each top height (crn-spec.md section 3.2).
RECIPE_LOSS_WEIGHTS = {256: "cityscapes-256p", 512: "cityscapes-512p", 1024: "cityscapes-512p"}

# Fields that change what a run computes. The default run name is a digest of them, so the
# same command resumes the same run and a different one starts afresh. Operational fields
# (logging cadence, workers' threads, failure budget, where things are written) stay out.
IDENTITY_FIELDS = (
    "preset", "store", "resolution", "num_outputs", "num_workers", "batch_size", "steps", "epochs",
    "lr", "loss_weights", "vgg_weights", "recalibrate_after_epoch", "precision", "init_from",
    "train_modules", "shuffle_buffer", "seed",
)


@dataclass
class TrainConfig:
    # --- model and data ---
    store: str  # the preprocessed store (folder or s3://bucket/prefix)
    preset: str = "crn-256p"  # crn.presets name; fixes widths, top resolution and K
    resolution: str = "auto"  # "HxW" read from the store; must equal the model's top resolution
    num_outputs: int = 0  # K; 0 = the preset's own
    # --- workers ---
    num_workers: int = 1  # Ray Train workers (DDP ranks)
    use_gpu: bool = False  # one GPU per worker (NCCL); otherwise CPU workers with gloo
    cpus_per_worker: float = 1.0  # logical CPUs each worker reserves; the rest feed Ray Data
    threads_per_worker: int = 0  # torch threads per CPU worker; 0 = cores / workers on the node
    # --- schedule ---
    batch_size: int = 1  # samples per worker per step (the authors: 1)
    steps: int = 0  # stop after this many optimizer steps; 0 = no step limit
    epochs: int = 0  # stop after this many passes over the data; 0 = the recipe's
    lr: float = 1e-4  # Adam learning rate, constant
    seed: int = 0  # model initialisation and per-epoch shuffling
    shuffle_buffer: int = 64  # rows in each worker's local shuffle buffer
    cache_data: str = "auto"  # keep the decoded training data in Ray's object store: auto, yes, no
    # --- loss ---
    loss_weights: str = "auto"  # crn.losses.LAYER_WEIGHTS row; auto = the recipe's for this size
    vgg_weights: str = "imagenet"  # "imagenet" (torchvision cache), a .pth path, or "random"
    recalibrate_after_epoch: int = 0  # re-weight VGG layers after this epoch (spec 3.3); 0 = never
    # --- memory ---
    precision: str = "fp32"  # "bf16" runs forward and loss under bfloat16 autocast
    activation_checkpointing: bool = False  # recompute each module's activations in backward
    # --- progressive stages ---
    init_from: str = ""  # earlier stage: checkpoint path or models:/ URI; "" = from scratch
    train_modules: str = "all"  # comma list of module names ("512x1024", "head") that learn
    # --- checkpoints, tracking, faults ---
    run_name: str = "auto"  # Ray Train run (and resume key); auto = digest of the identity fields
    storage_path: str = "auto"  # where runs and checkpoints go; auto = <work dir>/ray_results
    checkpoint_every: int = 500  # steps between checkpoints (one is always written at the end)
    keep_checkpoints: int = 3  # newest checkpoints kept in storage
    log_every: int = 10  # steps between reports to the driver (MLflow gets every step)
    image_every: int = 500  # steps between label | outputs | photo grids; 0 = none
    max_failures: int = 3  # worker-group restarts from the last checkpoint before giving up
    experiment: str = "crn-train"  # MLflow experiment
    model_name: str = "auto"  # registered model; auto = crn-<dataset>-<HxW>
    alias: str = "candidate"  # alias the registered version gets
    fault_at_step: int = 0  # testing: the last rank exits once at this step (0 = never)
    dry_run: bool = False  # print the resolved config and exit

    def identity(self) -> dict:
        return {name: getattr(self, name) for name in IDENTITY_FIELDS}

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jobs/train.py",
        description="Train a CRN from a preprocessed store with Ray Train; track it in MLflow and register the model.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d = TrainConfig(store="")
    p.add_argument("--store", required=True, help="preprocessed store: a folder or s3://bucket/prefix")
    p.add_argument("--preset", default=d.preset, choices=sorted(PRESETS), help="model preset (crn.presets)")
    p.add_argument("--resolution", default=d.resolution, help="HxW to train at; auto = the preset's top resolution")
    p.add_argument("--num-outputs", type=int, default=d.num_outputs, help="K images per label map; 0 = the preset's K")
    p.add_argument("--num-workers", type=int, default=d.num_workers, help="Ray Train workers (DDP ranks)")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per worker; otherwise CPU workers with gloo")
    p.add_argument("--cpus-per-worker", type=float, default=d.cpus_per_worker,
                   help="logical CPUs each worker reserves (the rest run Ray Data)")
    p.add_argument("--threads-per-worker", type=int, default=d.threads_per_worker,
                   help="torch threads per CPU worker; 0 = the node's cores divided among its workers")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="samples per worker per step")
    p.add_argument("--steps", type=int, default=d.steps, help="stop after this many optimizer steps; 0 = no limit")
    p.add_argument("--epochs", type=int, default=d.epochs,
                   help="stop after this many passes over the data (whichever of steps/epochs comes first); 0 = recipe")
    p.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate (constant)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed for initialisation and shuffling")
    p.add_argument("--shuffle-buffer", type=int, default=d.shuffle_buffer,
                   help="rows in each worker's local shuffle buffer (reshuffled every epoch); 0 = no shuffling")
    p.add_argument("--cache-data", default=d.cache_data, choices=CACHE_CHOICES,
                   help="hold the decoded training data in Ray's object store across epochs instead of re-reading "
                        "the store every epoch; auto = when the run spans several epochs and the data takes at "
                        "most a quarter of the object store")
    p.add_argument("--loss-weights", default=d.loss_weights, choices=["auto", *LAYER_WEIGHTS],
                   help="VGG layer weights (crn-spec.md 3.2); auto = the recipe's row for the resolution")
    p.add_argument("--vgg-weights", default=d.vgg_weights,
                   help="loss network weights: imagenet (torchvision cache, never downloaded), a .pth file, or random")
    p.add_argument("--recalibrate-after-epoch", type=int, default=d.recalibrate_after_epoch,
                   help="after this epoch, divide each layer weight by its mean term over that epoch "
                        "(spec 3.3); 0 = never")
    p.add_argument("--precision", default=d.precision, choices=PRECISIONS, help="bf16 = bfloat16 autocast")
    p.add_argument("--activation-checkpointing", action="store_true",
                   help="recompute each refinement module's activations in the backward pass (less memory)")
    p.add_argument("--init-from", default=d.init_from,
                   help="progressive stage: start from this checkpoint file or models:/ URI (matching modules only)")
    p.add_argument("--train-modules", default=d.train_modules,
                   help="comma list of modules that learn, e.g. 512x1024,1024x2048,head; all = every module")
    p.add_argument("--run-name", default=d.run_name,
                   help="Ray Train run name; re-running with the same name resumes; auto = from the config")
    p.add_argument("--storage-path", default=d.storage_path,
                   help="folder or s3:// prefix for runs and checkpoints; auto = <work dir>/ray_results")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="steps between checkpoints")
    p.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints, help="newest checkpoints to keep")
    p.add_argument("--log-every", type=int, default=d.log_every, help="steps between metric reports")
    p.add_argument("--image-every", type=int, default=d.image_every, help="steps between image grids; 0 = none")
    p.add_argument("--max-failures", type=int, default=d.max_failures,
                   help="restarts from the last checkpoint after a lost worker before the run fails")
    p.add_argument("--experiment", default=d.experiment, help="MLflow experiment name")
    p.add_argument("--model-name", default=d.model_name, help="registered model name; auto = crn-<dataset>-<HxW>")
    p.add_argument("--alias", default=d.alias, help="alias the new registered version gets")
    p.add_argument("--fault-at-step", type=int, default=d.fault_at_step,
                   help="testing only: the last rank kills itself once at this step (0 = never)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved configuration and exit")
    return p


def config_from_argv(argv: Sequence[str] | None) -> TrainConfig:
    args = build_parser().parse_args(argv)
    config = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    check(config)
    return config


def check(config: TrainConfig) -> None:
    """One-line errors for values no run could use."""
    positive = ("num_workers", "batch_size", "checkpoint_every", "keep_checkpoints", "log_every")
    for name in positive:
        if getattr(config, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")
    non_negative = ("num_outputs", "threads_per_worker", "steps", "epochs", "shuffle_buffer",
                    "recalibrate_after_epoch", "image_every", "fault_at_step")
    for name in non_negative:
        if getattr(config, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must not be negative, got {getattr(config, name)}")
    if config.max_failures < -1:
        raise UserError(f"--max-failures must be -1 (unlimited) or more, got {config.max_failures}")
    if config.cpus_per_worker <= 0 or config.lr <= 0:
        raise UserError("--cpus-per-worker and --lr must be positive")


def resolve(config: TrainConfig) -> TrainConfig:
    """Fill in every "auto" and 0-means-default field; the result is what the run records."""
    preset = make_config(config.preset, num_classes=1)
    top = preset.top_resolution
    resolved = dataclasses.replace(config)
    if resolved.num_outputs == 0:
        resolved.num_outputs = preset.num_outputs
    if resolved.resolution == "auto":
        resolved.resolution = resolution_name(top)
    if resolved.epochs == 0:
        resolved.epochs = RECIPE_EPOCHS[_recipe_height(top[0])]
    if resolved.loss_weights == "auto":
        resolved.loss_weights = RECIPE_LOSS_WEIGHTS[_recipe_height(top[0])]
    if resolved.storage_path == "auto":
        resolved.storage_path = str(work_dir() / "ray_results")
    elif "://" not in resolved.storage_path:
        resolved.storage_path = str(Path(resolved.storage_path).expanduser().resolve())
    # Workers run in other working directories: local paths must be absolute.
    if "://" not in resolved.store:
        resolved.store = str(Path(resolved.store).expanduser().resolve())
    if resolved.run_name == "auto":
        identity = json.dumps(resolved.identity(), sort_keys=True)
        digest = hashlib.sha256(identity.encode()).hexdigest()[:10]
        resolved.run_name = f"train-{resolved.preset}-{resolved.resolution}-{digest}"
    return resolved


def _recipe_height(height: int) -> int:
    return min((h for h in RECIPE_EPOCHS if h >= height), default=max(RECIPE_EPOCHS))
