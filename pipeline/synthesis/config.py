"""The synthesis job's configuration: one dataclass whose fields are the command line's flags."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Sequence

from crn.resolution import Resolution
from pipeline.data.formats import LABEL_TYPES
from pipeline.data.store import VAL_SPLIT
from pipeline.errors import UserError
from pipeline.fs import absolute
from pipeline.options import (PRECISIONS, at_least, batch_size_option, dry_run_option, experiment_option, from_argv,
                              non_negative, option, run_name_option, store_option)
from pipeline.registry.uris import model_uri
from pipeline.runtime import lasting_output


@dataclass
class SynthesizeConfig:
    # --- what to synthesize ---
    model: str = option(help="models:/<name>@<alias>, models:/<name>/<version>, runs:/<id>/model, a checkpoint file "
                             "(local or s3://), or a registered model name alone (= models:/<name>@champion)")
    output: str = option(help="output folder or s3://bucket/prefix; re-running into it resumes")
    store: str = store_option("preprocessed store (folder or s3://bucket/prefix) to read a split of; or --labels", "")
    split: str = option(VAL_SPLIT, "store split to synthesize")
    labels: str = option("", "folder (or s3:// prefix) of label map PNGs, no photos needed; or --store")
    label_type: str = option("auto", "--labels maps hold schema ids (one channel) or colours (RGB); auto: each file's "
                                     "mode and palette decide (the log counts each kind)", choices=LABEL_TYPES)
    schema: str = option("cityscapes", "label schema of --labels maps: built-in name or JSON file")
    resolution: Resolution | None = option(None, "HxW; default: the model's top resolution (the only one it takes)")
    limit: int = option(0, "synthesize at most this many samples now (0 = all); re-running does the rest",
                        check=non_negative)
    # --- compute ---
    batch_size: int = batch_size_option(8, "label maps per forward pass")
    num_actors: int = option(0, "actors in the pool, all started at once; 0 = one per GPU in the cluster with "
                                "--use-gpu, else 1",
                             check=non_negative)
    use_gpu: bool = option(False, "one GPU per actor")
    threads_per_actor: int = option(0, "torch threads (and logical CPUs) per CPU actor; 0 = this machine's cores / "
                                       "actors", check=non_negative)
    precision: str = option("fp32", "bf16 = bfloat16 autocast (GPU only)", choices=PRECISIONS)
    # --- provenance and tracking ---
    seed: int = option(0, "recorded in the manifest for provenance; the CRN has no noise input, so pixels do not "
                          "depend on it")
    gallery_samples: int = option(8, "samples shown in the HTML gallery", check=at_least(1))
    experiment: str = experiment_option("crn-synthesize")
    run_name: str = run_name_option()
    dry_run: bool = dry_run_option()

    def check(self) -> None:
        if bool(self.store) == bool(self.labels):
            raise UserError("give exactly one of --store (a preprocessed store) and --labels (a folder of label maps)")
        if self.precision == "bf16" and not self.use_gpu:
            raise UserError("--precision bf16 needs --use-gpu (bfloat16 autocast is for GPUs)")


def parse_synthesize_config(argv: Sequence[str] | None) -> SynthesizeConfig:
    config = from_argv(SynthesizeConfig, argv, prog="jobs/synthesize.py",
                       description="Turn label maps into photographs with a trained CRN (Ray Data actor pool); "
                                   "track it in MLflow.")
    return resolve(config)


def resolve(config: SynthesizeConfig) -> SynthesizeConfig:
    """Make the config explicit: the model URI spelled out, local paths absolute, counts filled in."""
    config.check()
    resolved = dataclasses.replace(config, model=model_uri(config.model))
    for name in ("model", "store", "labels"):
        setattr(resolved, name, absolute(getattr(resolved, name)))
    resolved.output = lasting_output(resolved.output, "--output")
    if resolved.num_actors == 0 and not resolved.use_gpu:
        resolved.num_actors = 1  # with --use-gpu: the cluster's GPU count, known once Ray is up
    if resolved.threads_per_actor == 0 and not resolved.use_gpu:
        resolved.threads_per_actor = max(1, (os.cpu_count() or 1) // resolved.num_actors)
    return resolved

