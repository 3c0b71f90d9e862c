"""The segmenter job's configuration: one dataclass whose fields are the command line's flags.

    config = parse_segmenter_config(["--store", "work/demo/store", "--steps", "600"])
    config = SegmenterTrainConfig(store="work/demo/store", steps=600)   # the same, built directly
    resolved = resolve(config)                                           # every "auto" filled in

The workers, storage and run-name fields are those every training has (pipeline.trainer);
the identity fields make the default run name, so the same command resumes the same run.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

from crn.resolution import Resolution
from pipeline.data.store import TRAIN_SPLIT, open_store
from pipeline.errors import UserError
from pipeline.fs import absolute
from pipeline.options import (AUTO, at_least, batch_size_option, dry_run_option, experiment_option, from_argv,
                              non_negative, option, positive, store_option)
from pipeline.segmenter.data import TRAIN_ON, check_synthesized
from pipeline.segmenter.network import ARCHITECTURES
from pipeline.trainer import TrainingConfig, default_run_name, storage_location


@dataclass
class SegmenterTrainConfig(TrainingConfig):
    store: str = store_option("preprocessed store with photos (folder or s3://); trains on its train split",
                              identity=True)
    resolution: Resolution | None = option(None, "HxW to train at (the resolution the evaluation scores); default: "
                                                 "the store's top resolution", identity=True)
    train_on: str = option("real", "what it learns from: the store's train photos, the synthesized images of --synthesized, "
                                   "or both (pipeline.segmenter.data)", choices=TRAIN_ON, identity=True)
    synthesized: str = option("", "synthesis output folder holding every variant of the train label maps of "
                                  "--synthesized-labels (for --train-on synthesized or both)", identity=True)
    synthesized_labels: str = option("", "store whose train label maps the --synthesized images were made from; "
                                         "default: --store (a label-only store is fine)", identity=True)
    architecture: str = option(ARCHITECTURES[0], "torchvision segmentation architecture, trained from scratch",
                               choices=ARCHITECTURES, identity=True)
    steps: int = option(600, "optimizer steps", check=at_least(1), identity=True)
    batch_size: int = batch_size_option(8, "samples per worker per step", identity=True)
    lr: float = option(1e-3, "AdamW learning rate (constant)", check=positive, identity=True)
    weight_decay: float = option(1e-4, "AdamW weight decay", check=non_negative, identity=True)
    seed: int = option(0, "seed for initialisation, shuffling and flips", identity=True)
    experiment: str = experiment_option("crn-segmenter")
    model_name: str = option(AUTO, "registered model name; auto = seg-<dataset>-<HxW>")
    alias: str = option("current", "alias the new registered version gets")
    dry_run: bool = dry_run_option()


def parse_segmenter_config(argv: Sequence[str] | None) -> SegmenterTrainConfig:
    return from_argv(SegmenterTrainConfig, argv, prog="jobs/train_segmenter.py",
                     description="Train a segmenter on a store's real photos with Ray Train (for evaluating "
                                 "synthesized images); log and register it in MLflow.")


def resolve(config: SegmenterTrainConfig) -> SegmenterTrainConfig:
    """Fill in every "auto" from the store; local paths absolute (workers run elsewhere)."""
    from pipeline.training.plan import dataset_name

    store = open_store(config.store)
    if not store.has_photos:
        raise UserError(f"store {config.store} has no photos: a segmenter learns from photos")
    samples = store.count(TRAIN_SPLIT)
    if samples < config.batch_size * config.num_workers:
        raise UserError(f"store {config.store} has {samples} {TRAIN_SPLIT} samples, fewer than --batch-size "
                        f"{config.batch_size} x --num-workers {config.num_workers}: no step could be taken")
    resolved = dataclasses.replace(config)
    resolved.store = absolute(resolved.store)
    resolved.resolution = Resolution.parse(store.resolution(config.resolution or store.top_resolution))
    resolved.storage_path = storage_location(resolved.storage_path)
    run_prefix, model_suffix = f"segmenter-{resolved.resolution}", ""
    if resolved.train_on == "real":
        if config.synthesized or config.synthesized_labels:
            raise UserError("--synthesized and --synthesized-labels are for --train-on synthesized or both")
    else:
        if not config.synthesized:
            raise UserError(f"--train-on {config.train_on} needs --synthesized (a synthesis output folder)")
        resolved.synthesized = absolute(config.synthesized)
        resolved.synthesized_labels = absolute(config.synthesized_labels or config.store)
        images = check_synthesized(resolved.synthesized, resolved.synthesized_labels, str(resolved.resolution),
                                   store.schema.fingerprint())
        # The folder's weights name the run: a folder refilled by another model is another run.
        run_prefix += f"-{resolved.train_on}-{images.model_sha256[:8]}"
        model_suffix = "-on-synthesized" if resolved.train_on == "synthesized" else "-on-real-and-synthesized"
    if resolved.run_name == AUTO:
        resolved.run_name = default_run_name(run_prefix, resolved)
    if resolved.model_name == AUTO:
        resolved.model_name = f"seg-{dataset_name(store)}-{resolved.resolution}{model_suffix}"
    return resolved
