"""The training job's configuration: one dataclass whose fields are the command line's flags.

    config = from_argv(TrainConfig, ["--store", "work/toy-store", "--preset", "crn-tiny"], ...)
    config = parse_train_config([...])     # the same, as jobs/train.py calls it

Defaults follow the published recipe (pipeline.training.recipe, docs/recipe.md): Adam
at 1e-4, batch 1, the preset's K, the recipe's epochs, layer weights fit for the loss
network's weights (`recipe.layer_weights_choice`), and the lower stage to start from. Fields
left at "auto", 0 or unset are filled in by `resolve()`, which the plan calls with the
store's data set and the loss network's input convention; `--dry-run` prints the result.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Sequence

from crn.losses import LAYER_WEIGHTS
from crn.presets import PRESETS, make_config
from crn.resolution import Resolution
from pipeline.errors import UserError
from pipeline.evaluation.conventions import CONVENTIONS, DEFAULT_CONVENTION
from pipeline.fs import absolute
from pipeline.options import (
    AUTO,
    PRECISIONS,
    batch_size_option,
    dry_run_option,
    experiment_option,
    from_argv,
    identity_of,
    non_negative,
    option,
    positive,
    store_option,
    to_dict,
)
from pipeline.trainer import TrainingConfig, default_run_name, storage_location
from pipeline.training.recipe import ALL_MODULES, layer_weights_choice, recipe_for


SCORES = "scores while training"
LAST = "last"
SELECT_BY = (LAST, "miou", "fid")
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class TrainConfig(TrainingConfig):
    # --- model and data ---
    store: str = store_option(identity=True)
    preset: str = option("crn-256p", "model preset (crn.presets): widths, top resolution and K",
                         choices=PRESETS, identity=True)
    resolution: Resolution | None = option(None, "HxW to train at; default: the preset's top resolution (the only "
                                                 "one it takes)", identity=True)
    num_outputs: int = option(0, "K images per label map; 0 = the preset's K", check=non_negative, identity=True)
    # --- schedule ---
    batch_size: int = batch_size_option(1, "samples per worker per step (the authors: 1)", identity=True)
    steps: int = option(0, "stop after this many optimizer steps; 0 = no step limit", check=non_negative, identity=True)
    epochs: int = option(0, "stop after this many passes over the data (whichever of steps/epochs comes first); "
                            "0 = the recipe's", check=non_negative, identity=True)
    lr: float = option(1e-4, "Adam learning rate (the authors': 1e-4, constant)", check=positive, identity=True)
    lr_schedule: str = option("constant", "constant (the authors'), or cosine: from --lr down to 0 at --steps, "
                                          "which settles the last steps' weights (needs --steps)",
                              choices=LR_SCHEDULES, identity=True)
    seed: int = option(0, "seed for initialisation and shuffling", identity=True)
    row_cache_mb: int = option(256, "MiB of decoded store row groups each worker keeps (rows are read by index in "
                                    "a fresh order every epoch; a data set that fits is read once)",
                               check=non_negative)
    # --- loss ---
    loss_weights: str = option(AUTO, "VGG layer weights to start from (docs/model.md#layer-weights); auto = the recipe's published "
                                     "row with the authors' MatConvNet VGG weights, the uncalibrated row (recalibrated "
                                     "after epoch 1) with torchvision-layout or random weights",
                               choices=[AUTO, *LAYER_WEIGHTS], identity=True)
    vgg_weights: str = option("imagenet", "loss network weights: imagenet (torchvision cache, never downloaded), "
                                          "a .pth file, the authors' imagenet-vgg-verydeep-19.mat, or random",
                              identity=True)
    recalibrate_after_epoch: int | None = option(None, "after this epoch, divide each layer weight by its mean term "
                                                       "over that epoch (docs/recipe.md#recalibration); 0 = never; default: 1 when the "
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
    # --- images and tracking (workers and the run: pipeline.trainer.TrainingConfig) ---
    image_every: int = option(500, "steps between label | outputs | photo grids (and one at the last step); 0 = none",
                              check=non_negative)
    # --- scores while training (pipeline.training.scores, docs/evaluation.md#scores-while-training) ---
    eval_every: int = option(0, "score the checkpoint written every this many steps (a multiple of "
                                "--checkpoint-every), and the last one, beside the workers; 0 = never",
                             check=non_negative, group=SCORES)
    eval_segmenter: str = option("", "the segmenter the scores use, as jobs/evaluate.py --segmenter takes it",
                                 group=SCORES)
    eval_protocol: str = option(DEFAULT_CONVENTION, "the scoring convention (docs/evaluation.md#conventions)",
                                choices=list(CONVENTIONS), group=SCORES)
    eval_samples: int = option(0, "score the first this many validation samples (sorted ids), the same ones each "
                                  "time; 0 = the whole split", check=non_negative, group=SCORES)
    eval_fid_weights: str = option("none", "FID Inception weights as jobs/evaluate.py --fid-weights takes them; "
                                           "none = no FID", group=SCORES)
    eval_cpus: float = option(1.0, "logical CPUs the scoring task reserves (its torch threads: at least 1)",
                              check=positive, group=SCORES)
    eval_wait_s: int = option(3600, "seconds the job waits after training for the scores still running, before "
                                    "it selects and registers; those not in by then are listed in the run",
                              check=non_negative, group=SCORES)
    select_by: str = option(LAST, "which checkpoint is registered: the last, or the best scored by eval.miou "
                                  "(highest) or eval.fid (lowest)", choices=SELECT_BY, group=SCORES)
    experiment: str = experiment_option("crn-train")
    model_name: str = option(AUTO, "registered model name; auto = crn-<dataset>-<HxW>")
    alias: str = option("candidate", "alias the new registered version gets")
    dry_run: bool = dry_run_option("the resolved configuration and the recipe table")

    def check(self) -> None:
        if self.eval_every:
            if self.eval_every % self.checkpoint_every:
                # Only a checkpoint can be scored and registered: each score belongs to one.
                raise UserError(f"--eval-every {self.eval_every} must be a multiple of --checkpoint-every "
                                f"{self.checkpoint_every}: a score is a checkpoint's")
            if not self.eval_segmenter:
                raise UserError("--eval-every needs --eval-segmenter (as jobs/evaluate.py --segmenter)")
        if self.select_by != LAST and not self.eval_every:
            raise UserError(f"--select-by {self.select_by} needs scores: give --eval-every")
        if self.select_by == "fid" and self.eval_fid_weights == "none":
            raise UserError("--select-by fid needs --eval-fid-weights")
        if self.lr_schedule != "constant" and not self.steps:
            raise UserError(f"--lr-schedule {self.lr_schedule} decays over --steps: give --steps")
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


def learning_rate(config: TrainConfig, step: int) -> float:
    """The rate of the step after `step` steps: a function of the step alone, so a resumed run
    takes the same rates as an uninterrupted one without saving a scheduler."""
    if config.lr_schedule == "cosine":
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(step, config.steps) / config.steps))
    return config.lr


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
    resolved.storage_path = storage_location(resolved.storage_path)
    resolved.store = absolute(resolved.store)
    if resolved.run_name == AUTO:
        resolved.run_name = default_run_name(f"train-{resolved.preset}-{resolved.resolution}", resolved)
    return resolved
