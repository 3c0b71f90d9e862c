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
from pipeline.segmenter.network import ARCHITECTURES
from pipeline.trainer import TrainingConfig, default_run_name, storage_location


@dataclass
class SegmenterTrainConfig(TrainingConfig):
    store: str = store_option("preprocessed store with photos (folder or s3://); trains on its train split",
                              identity=True)
    resolution: Resolution | None = option(None, "HxW to train at (the resolution the evaluation scores); default: "
                                                 "the store's top resolution", identity=True)
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
    if resolved.run_name == AUTO:
        resolved.run_name = default_run_name(f"segmenter-{resolved.resolution}", resolved)
    if resolved.model_name == AUTO:
        resolved.model_name = f"seg-{dataset_name(store)}-{resolved.resolution}"
    return resolved
