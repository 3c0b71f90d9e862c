"""The evaluation job's configuration: one dataclass whose fields are the command line's flags."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Sequence

from pipeline.data.store import VAL_SPLIT
from pipeline.errors import UserError
from pipeline.evaluation.conventions import CONVENTIONS, DEFAULT_CONVENTION, convention
from pipeline.evaluation.metrics.fid import DEFAULT_FID_BACKEND, FID_BACKENDS
from pipeline.fs import absolute
from pipeline.options import (AUTO, at_least, batch_size_option, dry_run_option, experiment_option, from_argv,
                              non_negative, option, run_name_option, store_option)
from pipeline.registry.uris import model_uri
from pipeline.runtime import lasting_output
from pipeline.segmenter.drn import absolute_segmenter_uri


def _conventions(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ValueError("name at least one protocol")
    for name in names:
        convention(name)  # ValueError naming the choices
    if len(set(names)) != len(names):
        raise ValueError(f"a protocol named twice in {text}")
    return names


@dataclass(kw_only=True)
class EvaluateConfig:
    # --- what to evaluate, on what ---
    model: str = option("", "the CRN: models:/<name>/<version>, models:/<name>@<alias>, a registered name alone "
                            "(= its @champion), runs:/..., or a checkpoint file; required unless --oracle")
    store: str = store_option("preprocessed store with photos: a folder or s3://bucket/prefix")
    segmenter: str = option(help="segmenter: drn-d-105:<file> (the published Cityscapes DRN-D-105), a TorchScript "
                                 "file (local or s3://) or a models:/ URI of one registered by jobs/train_segmenter.py "
                                 "(docs/evaluation.md#segmenter-contract)")
    protocols: list[str] = option([DEFAULT_CONVENTION], "comma-separated scoring conventions, each with its own "
                                  f"protocol id, all scored over the same images ({', '.join(CONVENTIONS)}; "
                                  "docs/evaluation.md#conventions); the first is the gate's", parse=_conventions)
    oracle: bool = option(False, "score the real photos themselves as if a model had made them (no --model): the "
                                 "reference row of the published table")
    resolution: str = option("", "with --oracle: the photos' size, HxW (default: the store's largest)")
    split: str = option(VAL_SPLIT, "store split whose label maps are synthesized and scored")
    segmenter_classes: str = option("", "JSON file listing the segmenter's class names in output order, for a "
                                        "TorchScript file that does not carry classes.json")
    fid_backend: str = option(DEFAULT_FID_BACKEND, "whose FID: the library and its Inception weights "
                                                   "(docs/evaluation.md#fid)", choices=list(FID_BACKENDS))
    fid_weights: str = option(AUTO, "the FID backend's Inception weights: a file, auto (its published file name in "
                                    "<torch hub dir>/checkpoints/, if there), or none; never downloaded")
    synthesized: str = option("", "synthesis output folder (or s3://) to synthesize into, or to reuse when its "
                                  "job.json names the same weights; default: <work dir>/evaluations/<model>-<split>")
    # --- the registry gate ---
    promote: bool = option(False, "make this version @champion if its mIoU beats the champion's under the same "
                                  "protocol (or there is no champion); the comparison is recorded on both versions")
    # --- compute ---
    batch_size: int = batch_size_option(8, "images per segmenter and Inception forward pass")
    num_actors: int = option(1, "scoring actors (each holds the segmenter and the Inception network)",
                             check=at_least(1))
    threads_per_actor: int = option(0, "torch threads per scoring actor; 0 = this machine's cores / actors",
                                    check=non_negative)
    grid_samples: int = option(4, "rows of the photo | synthesized | segmentation grid logged to MLflow",
                               check=at_least(1))
    experiment: str = experiment_option("crn-evaluate", "MLflow experiment name (the synthesis it runs logs there too)")
    run_name: str = run_name_option()
    dry_run: bool = dry_run_option("the resolved plan (protocol ids included)")

    def check(self) -> None:
        if self.oracle == bool(self.model):
            raise UserError("give --model (the CRN to score) or --oracle (score the real photos), not both"
                            if self.oracle else "--model is required (or --oracle to score the real photos)")
        if self.oracle and self.promote:
            raise UserError("--promote needs a model; --oracle scores the real photos")
        if self.resolution and not self.oracle:
            raise UserError("--resolution goes with --oracle; a model's images are made at its own resolution")


def parse_evaluate_config(argv: Sequence[str] | None) -> EvaluateConfig:
    config = from_argv(EvaluateConfig, argv, prog="jobs/evaluate.py",
                       description="Score a CRN the way the field does: segmentation scores of its images against "
                                   "their label maps (and of the real photos), FID, diversity; one MLflow run; "
                                   "optionally promote it through the registry gate.")
    return resolve(config)


def resolve(config: EvaluateConfig) -> EvaluateConfig:
    """The model URI spelled out, local paths absolute (Ray workers run elsewhere), counts filled in."""
    config.check()
    resolved = dataclasses.replace(config, model=model_uri(config.model) if config.model else "")
    for name in ("model", "store", "segmenter_classes"):
        setattr(resolved, name, absolute(getattr(resolved, name)))
    resolved.synthesized = lasting_output(resolved.synthesized, "--synthesized")
    resolved.segmenter = absolute_segmenter_uri(resolved.segmenter)
    if resolved.threads_per_actor == 0:
        resolved.threads_per_actor = max(1, (os.cpu_count() or 1) // resolved.num_actors)
    return resolved
