"""Train on synthesized, test on real: what a generator's images are worth as training data.

    outcome = run(parse_utility_config(argv))          # what jobs/utility.py does

Bulk synthesis exists to make training data; this job measures whether it is any good as
such, the way the synthetic-data literature does. In order:

1. The generator is opened once (pipeline.registry.models.open_model) and synthesizes every
   `train` label map of `--labels` (default: `--store`), all K variants, through the synthesis
   job; a folder that already holds them all is reused, an interrupted one finished.
2. Segmenters, all alike but for what they learn from (pipeline.segmenter.job, Ray Train):
   on the real `train` photos of `--store` (the reference), on the synthesized images, and,
   unless `--skip-augmentation`, on both. Each is its own MLflow run and registered model
   version, tested by its own job on the real `val` photos of `--store`. A re-run reuses
   finished segmenters (the same settings make the same Ray Train run).
3. One MLflow run: `utility = mIoU(trained on synthesized) / mIoU(trained on real)` and
   `augmentation_gain = mIoU(real + synthesized) - mIoU(real)`, each segmenter's scores, the
   split sizes, the protocol (what makes the numbers comparable), and the three segmenter runs
   and versions as tags; the generator's model version gets the utility as tags.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from pipeline.data.store import TRAIN_SPLIT, VAL_SPLIT, Store, open_store
from pipeline.errors import UserError
from pipeline.records import log_model_input, start_job_run
from pipeline.registry.models import ModelRef, open_model
from pipeline.runtime import init_ray, work_dir
from pipeline.utility.config import UtilityConfig, resolve, segmenter_config

UTILITY_TAG = "utility."  # prefix of the model version's tags


@dataclass
class UtilityOutcome:
    run_id: str
    protocol_id: str
    utility: float
    augmentation_gain: float | None  # None with --skip-augmentation
    segmenters: dict = field(default_factory=dict)  # train_on -> SegmenterOutcome
    synthesized: str = ""


def protocol_of(config: UtilityConfig, store: Store, labels: Store, resolution: str) -> tuple[str, dict]:
    """What makes two utilities comparable: the real photos' store and test samples, the
    labels synthesized, the segmenter's settings and size. The generator is what is measured,
    so it is not part of it."""
    val_ids = store.sample_ids(VAL_SPLIT)
    protocol = {"format": "crn-utility/1", "store_schema": store.schema.fingerprint(),
                "val_sample_ids_sha256": hashlib.sha256("\n".join(val_ids).encode()).hexdigest(),
                "real_train_samples": store.count(TRAIN_SPLIT), "labels_train_samples": labels.count(TRAIN_SPLIT),
                "resolution": resolution, "architecture": config.architecture, "steps": config.steps,
                "batch_size": config.batch_size, "num_workers": config.num_workers, "lr": config.lr,
                "weight_decay": config.weight_decay, "seed": config.seed}
    digest = hashlib.sha256(json.dumps(protocol, sort_keys=True).encode()).hexdigest()[:12]
    return f"utility-{digest}", protocol


def synthesize_labels(config: UtilityConfig, model: ModelRef, labels: Store, output: str) -> None:
    """Every variant of every `train` label map of `--labels`, unless the folder has them."""
    from pipeline.synthesis import job as synthesis_job
    from pipeline.synthesis.config import SynthesizeConfig
    from pipeline.synthesis.outputs import images_complete

    ids = labels.sample_ids(TRAIN_SPLIT)
    if images_complete(output, model.sha256, str(model.config.top_resolution), ids, model.config.num_outputs):
        print(f"reusing the synthesized {TRAIN_SPLIT} images in {output} (job.json names the same weights)")
        return
    synthesis_job.run(SynthesizeConfig(model=model.pinned_uri, output=output, store=config.labels, split=TRAIN_SPLIT,
                                       experiment=config.experiment), model=model)


def run(config: UtilityConfig) -> UtilityOutcome:
    import mlflow

    from pipeline.segmenter import job as segmenter_job

    config = resolve(config)
    model = open_model(config.model)
    store = open_store(config.store)
    if not store.has_photos or VAL_SPLIT not in store.splits:
        raise UserError(f"store {config.store}: the utility needs real {TRAIN_SPLIT} and {VAL_SPLIT} photos")
    if model.schema.fingerprint() != store.schema.fingerprint():
        raise UserError(f"model {config.model} ({model.schema.name}) and store {config.store} "
                        f"({store.schema.name}) have different label schemas")
    resolution = model.config.top_resolution
    store.resolution(resolution)  # one-line error when the store lacks the generator's size
    name = f"{model.name}-v{model.version}" if model.name else f"checkpoint-{model.sha256[:12]}"
    synthesized = config.synthesized or str(work_dir() / "utility" / name)
    init_ray(dashboard=True)  # Ray Train's state queries need it

    print(f"[utility 1/3] synthesizing the {TRAIN_SPLIT} label maps of {config.labels} with {model.pinned_uri} "
          f"-> {synthesized}")
    labels = open_store(config.labels)
    synthesize_labels(config, model, labels, synthesized)
    learns_from = ["real", "synthesized"] + ([] if config.skip_augmentation else ["both"])
    segmenters = {}
    for number, train_on in enumerate(learns_from, start=1):
        print(f"[utility 2/3] segmenter {number} of {len(learns_from)}: trained on {train_on} "
              f"({config.steps} steps), tested on the real {VAL_SPLIT} photos")
        segmenters[train_on] = segmenter_job.run(segmenter_config(config, train_on, resolution, synthesized))

    miou = {train_on: outcome.val_miou for train_on, outcome in segmenters.items()}
    utility = miou["synthesized"] / miou["real"] if miou["real"] > 0 else float("nan")
    gain = miou["both"] - miou["real"] if "both" in miou else None
    protocol_id, protocol = protocol_of(config, store, labels, str(resolution))
    synthesized_images = labels.count(TRAIN_SPLIT) * model.config.num_outputs

    print("[utility 3/3] recording in MLflow")
    active = start_job_run(config.experiment, run_name=f"utility-{name}",
                           description=f"Train on synthesized ({model.pinned_uri}), test on real ({config.store}).")
    with active:
        run_id = active.info.run_id
        log_model_input(model.name, model.version)
        mlflow.log_params({"model": model.pinned_uri, "model_sha256": model.sha256, "store": config.store,
                           "labels": config.labels, "synthesized": synthesized, "protocol_id": protocol_id,
                           "real_train_photos": store.count(TRAIN_SPLIT), "synthesized_images": synthesized_images,
                           "val_photos": store.count(VAL_SPLIT),
                           **{f"protocol.{key}": value for key, value in protocol.items()}})
        metrics = {"utility": utility, **{f"miou.{k}": v for k, v in miou.items()},
                   **{f"pixel_accuracy.{k}": s.val_pixel_accuracy for k, s in segmenters.items()}}
        if gain is not None:
            metrics["augmentation_gain"] = gain
        mlflow.log_metrics(metrics)
        mlflow.set_tags({**{f"segmenter.{k}.run_id": s.run_id for k, s in segmenters.items()},
                         **{f"segmenter.{k}.model": s.uri for k, s in segmenters.items()}})
    if model.name and model.version:
        tag_model_version(model, run_id, protocol_id, utility, gain)
    gain_text = "" if gain is None else f", real + synthesized {miou['both']:.3f} (gain {gain:+.3f})"
    print(f"utility {utility:.3f}: segmenters tested on the real {VAL_SPLIT} photos score mIoU "
          f"{miou['synthesized']:.3f} trained on {synthesized_images} synthesized images vs {miou['real']:.3f} on "
          f"{store.count(TRAIN_SPLIT)} real photos{gain_text}; protocol {protocol_id}; MLflow run {run_id}")
    return UtilityOutcome(run_id, protocol_id, utility, gain, segmenters, synthesized)


def tag_model_version(model: ModelRef, run_id: str, protocol_id: str, utility: float, gain: float | None) -> None:
    from mlflow import MlflowClient

    client = MlflowClient()
    tags = {"utility": f"{utility:.6g}", "run_id": run_id, "protocol": protocol_id}
    if gain is not None:
        tags["augmentation_gain"] = f"{gain:.6g}"
    for key, value in tags.items():
        client.set_model_version_tag(model.name, model.version, UTILITY_TAG + key, value)
