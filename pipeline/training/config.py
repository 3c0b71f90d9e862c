"""The training job's configuration: one dataclass whose fields are the command line's flags.

    config = from_argv(TrainConfig, ["--store", "work/toy-store", "--preset", "crn-tiny"], ...)
    config = parse_train_config([...])     # the same, as jobs/train.py calls it

Defaults follow the published recipe (pipeline.training.recipe, crn-spec.md section 4): Adam
at 1e-4, batch 1, the preset's K, the recipe's epochs, layer weights fit for the loss
network's weights (`recipe.layer_weights_choice`), and the lower stage to start from. Fields
left at "auto", 0 or unset are filled in by `resolve()`, which the plan calls with the
store's data set and the loss network's input convention; `--dry-run` prints the result.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from crn.losses import LAYER_WEIGHTS
from crn.presets import PRESETS, make_config
from crn.resolution import Resolution
from pipeline.options import AUTO, PRECISIONS, at_least, from_argv, identity_of, non_negative, option, positive, to_dict
from pipeline.fs import absolute
from pipeline.runtime import work_dir
from pipeline.errors import UserError
from pipeline.training.recipe import ALL_MODULES, layer_weights_choice, recipe_for

PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_SPREAD", "STRICT_PACK")

@dataclass
class TrainConfig:
    # --- model and data ---
    store: str = option(help="preprocessed store: a folder or s3://bucket/prefix", identity=True)
    preset: str = option("crn-256p", "model preset (crn.presets): widths, top resolution and K",
                         choices=sorted(PRESETS), identity=True)
    resolution: Resolution | None = option(None, "HxW to train at; default: the preset's top resolution (the only "
                                                 "one it takes)", identity=True)
    num_outputs: int = option(0, "K images per label map; 0 = the preset's K", check=non_negative, identity=True)
    # --- workers ---
    num_workers: int = option(1, "Ray Train workers (DDP ranks)", check=at_least(1), identity=True)
    use_gpu: bool = option(False, "one GPU per worker (NCCL); otherwise CPU workers with gloo")
    cpus_per_worker: float = option(1.0, "logical CPUs each worker reserves (the rest run Ray Data)", check=positive)
    placement_strategy: str = option("PACK", "how the workers are placed on the cluster's nodes (Ray placement group "
                                             "strategies): PACK fills nodes in turn, SPREAD prefers distinct nodes, "
                                             "STRICT_SPREAD puts every worker on a node of its own (a lost node then "
                                             "takes one rank with it), STRICT_PACK all on one node",
                                     choices=PLACEMENT_STRATEGIES)
    threads_per_worker: int = option(0, "torch threads per CPU worker; 0 = the node's cores divided among its workers",
                                     check=non_negative)
    # --- schedule ---
    batch_size: int = option(1, "samples per worker per step (the authors: 1)", check=at_least(1), identity=True)
    steps: int = option(0, "stop after this many optimizer steps; 0 = no step limit", check=non_negative, identity=True)
    epochs: int = option(0, "stop after this many passes over the data (whichever of steps/epochs comes first); "
                            "0 = the recipe's", check=non_negative, identity=True)
    lr: float = option(1e-4, "Adam learning rate (constant)", check=positive, identity=True)
    seed: int = option(0, "seed for initialisation and shuffling", identity=True)
    row_cache_mb: int = option(256, "MiB of decoded store row groups each worker keeps (rows are read by index in "
                                    "a fresh order every epoch; a data set that fits is read once)",
                               check=non_negative)
    # --- loss ---
    loss_weights: str = option(AUTO, "VGG layer weights to start from (crn-spec.md 3.2); auto = the recipe's published "
                                     "row with the authors' MatConvNet VGG weights, the uncalibrated row (recalibrated "
                                     "after epoch 1) with torchvision-layout or random weights",
                               choices=[AUTO, *LAYER_WEIGHTS], identity=True)
    vgg_weights: str = option("imagenet", "loss network weights: imagenet (torchvision cache, never downloaded), "
                                          "a .pth file, the authors' imagenet-vgg-verydeep-19.mat, or random",
                              identity=True)
    recalibrate_after_epoch: int | None = option(None, "after this epoch, divide each layer weight by its mean term "
                                                       "over that epoch (spec 3.3); 0 = never; default: 1 when the "
                                                       "layer weights start uncalibrated, else never",
                                                 check=non_negative, identity=True)
    # --- memory and speed ---
    precision: str = option("fp32", "bf16 = bfloat16 autocast", choices=PRECISIONS, identity=True)
    activation_checkpointing: bool = option(False, "recompute each refinement module's activations in the "
                                                   "backward pass (less memory)")
    compile: bool = option(False, "torch.compile the generator and the loss network: fuses the element-wise work "
                                  "around the convolutions; the first steps take minutes to compile "
                                  "(make bench-gpu measures whether it pays)")
    # --- progressive stages ---
    init_from: str = option("", "progressive stage: start from this lower-stage checkpoint file or models:/ URI "
                                "(its refinement modules, never its head); required for a preset whose recipe starts "
                                "from a lower stage (crn-512p, crn-1024p) unless --from-scratch", identity=True)
    from_scratch: bool = option(False, "train a preset whose recipe starts from a lower stage from scratch instead",
                                identity=True)
    train_modules: str = option(AUTO, "comma list of modules that learn, e.g. 512x1024,1024x2048,head; all = every "
                                      "module; auto = the recipe's with --init-from, else all", identity=True)
    progressive: bool = option(False, "run the recipe's whole chain of stages up to --preset (crn-256p, crn-512p, "
                                      "crn-1024p), each from the one below, each registered; re-running resumes")
    # --- checkpoints, tracking, faults ---
    run_name: str = option(AUTO, "Ray Train run name; re-running with the same name resumes; auto = from the config")
    storage_path: str = option(AUTO, "folder or s3:// prefix for runs and checkpoints; auto = <work dir>/ray_results")
    checkpoint_every: int = option(500, "steps between checkpoints (one is always written at the end)",
                                   check=at_least(1))
    keep_checkpoints: int = option(3, "newest checkpoints kept in storage", check=at_least(1))
    log_every: int = option(10, "steps between reports to the driver (MLflow gets every step)", check=at_least(1))
    image_every: int = option(500, "steps between label | outputs | photo grids; 0 = none", check=non_negative)
    max_failures: int = option(3, "restarts from the last checkpoint after a lost worker before the run fails; "
                                  "-1 = unlimited", check=at_least(-1))
    experiment: str = option("crn-train", "MLflow experiment name")
    model_name: str = option(AUTO, "registered model name; auto = crn-<dataset>-<HxW>")
    alias: str = option("candidate", "alias the new registered version gets")
    dry_run: bool = option(False, "print the resolved configuration and the recipe table, then exit")

    def check(self) -> None:
        if self.init_from and self.from_scratch:
            raise UserError("--init-from and --from-scratch contradict each other: give one")
        if self.progressive and (self.init_from or self.from_scratch):
            raise UserError("--progressive trains every stage from the one below: drop --init-from/--from-scratch")

    def identity(self) -> dict:
        """The fields marked identity=True: they change what a run computes. The default run
        name is a digest of them, so the same command resumes the same run and a different
        one starts afresh; operational fields (logging cadence, threads, failure budget,
        where things are written) stay out."""
        return identity_of(self)

    def to_json(self) -> str:
        return json.dumps(to_dict(self), indent=1)


def parse_train_config(argv: Sequence[str] | None) -> TrainConfig:
    return from_argv(TrainConfig, argv, prog="jobs/train.py",
                     description="Train a CRN from a preprocessed store with Ray Train; track it in MLflow and "
                                 "register the model.")


def resolve(config: TrainConfig, dataset: str, vgg_convention: str) -> TrainConfig:
    """Fill in every "auto" and 0-means-default field from the preset and the recipe row for
    `dataset` (the store's source format); the layer weights also depend on the loss
    network's input convention (crn.vgg: "torchvision" or "caffe"). The result is what the
    run records."""
    preset = make_config(config.preset, num_classes=1)
    recipe = recipe_for(config.preset, dataset)
    resolved = dataclasses.replace(config)
    if resolved.num_outputs == 0:
        resolved.num_outputs = preset.num_outputs
    if resolved.resolution is None:
        resolved.resolution = preset.top_resolution
    if resolved.epochs == 0:
        resolved.epochs = recipe.epochs
    if resolved.loss_weights == AUTO:
        resolved.loss_weights = layer_weights_choice(recipe, vgg_convention).start
    if resolved.recalibrate_after_epoch is None:
        resolved.recalibrate_after_epoch = layer_weights_choice(recipe, vgg_convention,
                                                                resolved.loss_weights).recalibrate_after_epoch
    if resolved.train_modules == AUTO:
        # The recipe's trained modules belong to its stage: a model that starts from scratch learns everything.
        resolved.train_modules = recipe.train_modules if resolved.init_from else ALL_MODULES
    resolved.storage_path = absolute(str(work_dir() / "ray_results") if resolved.storage_path == AUTO
                                     else resolved.storage_path)
    resolved.store = absolute(resolved.store)
    if resolved.run_name == AUTO:
        identity = json.dumps(resolved.identity(), sort_keys=True)
        digest = hashlib.sha256(identity.encode()).hexdigest()[:10]
        resolved.run_name = f"train-{resolved.preset}-{resolved.resolution}-{digest}"
    return resolved
