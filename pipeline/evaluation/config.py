"""The evaluation job's configuration: one dataclass whose fields are the command line's flags."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Sequence

from pipeline.data.store import VAL_SPLIT
from pipeline.fs import absolute
from pipeline.options import (AUTO, at_least, batch_size_option, dry_run_option, experiment_option, from_argv,
                              non_negative, option, run_name_option, store_option)
from pipeline.registry.uris import model_uri


@dataclass
class EvaluateConfig:
    # --- what to evaluate, on what ---
    model: str = option(help="the CRN: models:/<name>/<version>, models:/<name>@<alias>, a registered name alone "
                             "(= its @champion), runs:/..., or a checkpoint file")
    store: str = store_option("preprocessed store with photos: a folder or s3://bucket/prefix")
    segmenter: str = option(help="segmenter: a TorchScript file (local or s3://) or a models:/ URI of one registered "
                                 "by jobs/train_segmenter.py (docs/evaluation.md#segmenter-contract)")
    split: str = option(VAL_SPLIT, "store split whose label maps are synthesized and scored")
    segmenter_classes: str = option("", "JSON file listing the segmenter's class names in output order, for a "
                                        "TorchScript file that does not carry classes.json")
    fid_weights: str = option(AUTO, "FID Inception weights (torch-fidelity's pt_inception-2015-12-05-6726825d.pth): "
                                      "a file, auto (<torch hub dir>/checkpoints/ if there), or none; never downloaded")
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
    dry_run: bool = dry_run_option("the resolved plan (protocol included)")


def parse_evaluate_config(argv: Sequence[str] | None) -> EvaluateConfig:
    config = from_argv(EvaluateConfig, argv, prog="jobs/evaluate.py",
                       description="Score a CRN the way the field does: segmentation scores of its images against "
                                   "their label maps (and of the real photos), FID, diversity; one MLflow run; "
                                   "optionally promote it through the registry gate.")
    return resolve(config)


def resolve(config: EvaluateConfig) -> EvaluateConfig:
    """The model URI spelled out, local paths absolute (Ray workers run elsewhere), counts filled in."""
    resolved = dataclasses.replace(config, model=model_uri(config.model))
    for name in ("model", "store", "synthesized", "segmenter", "segmenter_classes"):
        setattr(resolved, name, absolute(getattr(resolved, name)))
    if resolved.threads_per_actor == 0:
        resolved.threads_per_actor = max(1, (os.cpu_count() or 1) // resolved.num_actors)
    return resolved
