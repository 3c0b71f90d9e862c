"""The utility job's configuration: one dataclass whose fields are the command line's flags.

    config = parse_utility_config(["--model", "crn-toy-32x64", "--store", "work/demo/store"])

The segmenter fields are those of jobs/train_segmenter.py and apply to every segmenter the
job trains, so that the only difference between them is what they learn from.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

from pipeline.fs import absolute
from pipeline.options import (at_least, batch_size_option, dry_run_option, experiment_option, from_argv,
                              non_negative, option, positive, store_option)
from pipeline.registry.uris import model_uri
from pipeline.segmenter.config import SegmenterTrainConfig
from pipeline.segmenter.network import ARCHITECTURES
from pipeline.trainer import TrainingConfig

SEGMENTER = "the segmenters (all alike but for what they learn from)"


@dataclass
class UtilityConfig(TrainingConfig):
    model: str = option(help="the generator: models:/<name>/<version>, models:/<name>@<alias>, or a registered name "
                             "alone (= @champion)")
    store: str = store_option("store with real photos: its train photos teach the reference segmenter, its val photos "
                              "test every segmenter")
    labels: str = store_option("store whose train label maps are synthesized (a label-only store is fine, e.g. GTA5 "
                               "labels tested on Cityscapes photos); default: --store", "")
    synthesized: str = option("", "synthesis output folder for those images (re-running into it resumes); default: "
                                  "<work dir>/utility/<model name>-v<version>")
    skip_augmentation: bool = option(False, "train no segmenter on real + synthesized (saves one training; no "
                                            "augmentation gain)")
    steps: int = option(600, "optimizer steps of each segmenter", check=at_least(1), group=SEGMENTER)
    batch_size: int = batch_size_option(8, "samples per worker per step")
    architecture: str = option(ARCHITECTURES[0], "torchvision segmentation architecture, trained from scratch",
                               choices=ARCHITECTURES, group=SEGMENTER)
    lr: float = option(1e-3, "AdamW learning rate (constant)", check=positive, group=SEGMENTER)
    weight_decay: float = option(1e-4, "AdamW weight decay", check=non_negative, group=SEGMENTER)
    seed: int = option(0, "seed for initialisation, shuffling and flips", group=SEGMENTER)
    experiment: str = experiment_option("crn-utility")
    dry_run: bool = dry_run_option()


def parse_utility_config(argv: Sequence[str] | None) -> UtilityConfig:
    config = from_argv(UtilityConfig, argv, prog="jobs/utility.py",
                       description="Train on synthesized, test on real: what a generator's images are worth as "
                                   "training data for a segmenter, against the real photos.")
    return resolve(config)


def resolve(config: UtilityConfig) -> UtilityConfig:
    """The model URI spelled out, the labels store filled in, local paths absolute."""
    resolved = dataclasses.replace(config, model=model_uri(config.model), labels=config.labels or config.store)
    for name in ("store", "labels", "synthesized"):
        setattr(resolved, name, absolute(getattr(resolved, name)))
    return resolved


def segmenter_config(config: UtilityConfig, train_on: str, resolution, synthesized: str) -> SegmenterTrainConfig:
    """The config of one of the job's segmenters: the shared training fields and segmenter
    settings, and what this one learns from."""
    shared = {field.name: getattr(config, field.name) for field in dataclasses.fields(TrainingConfig)}
    return SegmenterTrainConfig(
        **shared, store=config.store, resolution=resolution, train_on=train_on,
        synthesized=synthesized if train_on != "real" else "",
        synthesized_labels=config.labels if train_on != "real" else "",
        architecture=config.architecture, steps=config.steps, batch_size=config.batch_size, lr=config.lr,
        weight_decay=config.weight_decay, seed=config.seed, experiment=config.experiment)
