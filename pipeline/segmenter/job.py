"""Train a segmenter on a store's real photos with Ray Train, for data sets without a standard one.

    outcome = run(parse_segmenter_config(argv))         # what jobs/train_segmenter.py does
    outcome = run(SegmenterTrainConfig(store=..., steps=400))   # what the demo does

The evaluation (pipeline.evaluation.job) scores synthesized images by how well a segmenter
recovers their label maps. Cityscapes has the field's DRN-D-105; a toy or a user's data set
has none, so this job trains one: a torchvision segmentation architecture
(pipeline.segmenter.network) from scratch, on the store's `train` split at one resolution
(pipeline.segmenter.loop). It trains the way the CRN does (pipeline.trainer). In order:

1. The MLflow run: resumed if an earlier attempt of this Ray Train run left one, else new;
   the whole config as params, the store as its dataset input.
2. The store's training photos and labels go to the workers as a Ray Data dataset, held in
   the object store and, on each worker, in memory (a segmentation set at evaluation
   resolution is small).
3. `TorchTrainer.fit()` runs the loop (DDP over `--num-workers`); every step's loss reaches
   the MLflow run as the workers report; checkpoints every `--checkpoint-every` steps and at
   the end. The same command (same run name) resumes from the latest.
4. The driver exports the final weights as a TorchScript file with the schema's class order
   inside (pipeline.segmenter.file), scores it on the store's `val` split (the real photos'
   mIoU: what synthesized images are measured against), and logs and registers it in MLflow
   as `seg-<dataset>-<HxW>` with the alias `current`. A re-run of a finished run registers
   nothing new.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline import trainer
from pipeline.data.store import TRAIN_SPLIT, VAL_SPLIT, Store, open_store
from pipeline.options import to_dict
from pipeline.records import log_store_input
from pipeline.runtime import init_ray
from pipeline.segmenter.config import SegmenterTrainConfig, resolve
from pipeline.segmenter.data import check_synthesized, training_data
from pipeline.segmenter.loop import CHECKPOINT_FILE, train_loop_per_worker
from pipeline.segmenter.network import ExportedSegmenter, build_network


@dataclass
class SegmenterOutcome:
    run_id: str
    model_name: str
    model_version: str
    uri: str  # models:/<name>/<version>
    val_miou: float  # on the store's real val photos (the oracle of the evaluation)
    val_pixel_accuracy: float


def run(config: SegmenterTrainConfig) -> SegmenterOutcome:
    """The whole job for a config, resolved here (not a dry run: see jobs/train_segmenter.py)."""
    import mlflow

    config = resolve(config)
    store = open_store(config.store)
    num_scored_classes = store.schema.num_scored_classes
    init_ray(dashboard=True)  # Ray Train's state queries need it (pipeline.runtime.init_ray)
    trainer.check_resources(config)
    learns_from = {"real": f"the train photos of {config.store}",
                   "synthesized": f"the synthesized images in {config.synthesized}",
                   "both": f"the train photos of {config.store} and the synthesized images in {config.synthesized}"}
    description = (f"Segmenter ({config.architecture}, {config.resolution}) trained from scratch on "
                   f"{learns_from[config.train_on]}; tested on the real {VAL_SPLIT} photos of {config.store}.")
    active, resumed, logged_up_to = trainer.start_or_resume_run(config.experiment, trainer.run_dir(config),
                                                                config.run_name, description)
    with active:
        run_id = active.info.run_id
        trainer.log_params(to_dict(config), resumed)
        if not resumed:
            log_store_input(config.store, store, TRAIN_SPLIT)
        synthesized = None if config.train_on == "real" else check_synthesized(
            config.synthesized, config.synthesized_labels, str(config.resolution), store.schema.fingerprint())
        if synthesized is not None and not resumed:
            mlflow.set_tags({"synthesized.model_sha256": synthesized.model_sha256,
                             "synthesized.images": synthesized.num_label_maps * synthesized.num_outputs})
        data = training_data(config.train_on, store, str(config.resolution), synthesized)
        result = trainer.fit(
            train_loop_per_worker, {"config": to_dict(config), "num_scored_classes": num_scored_classes}, config, run_id=run_id,
            logged_up_to=logged_up_to, total_steps=config.steps, datasets={TRAIN_SPLIT: data.materialize()},
            # No malloc settings (pipeline.runtime.CPU_WORKER_MALLOC_ENV, which says why): measured,
            # this loop's CPU steps are faster without them, unlike the CRN's.
            runtime_env=None,
        )
        version = trainer.register_once(run_id, result.checkpoint,
                                        lambda: export_and_register(config, result.checkpoint, store, num_scored_classes))
        metrics = mlflow.get_run(run_id).data.metrics
    scores = (metrics.get("val_miou", float("nan")), metrics.get("val_pixel_accuracy", float("nan")))
    uri = f"models:/{config.model_name}/{version}"
    print(f"trained segmenter {config.architecture} at {config.resolution} for {config.steps} steps; "
          f"real {VAL_SPLIT} photos: mIoU {scores[0]:.3f}, pixel accuracy {scores[1]:.3f}; registered {uri} "
          f"as @{config.alias}; MLflow run {run_id}")
    return SegmenterOutcome(run_id, config.model_name, version, uri, scores[0], scores[1])


def score_on_photos(segmenter_data: bytes, store_uri: str, split: str, resolution: str, num_scored_classes: int):
    """The segmenter's scores on a split's real photos (pipeline.evaluation.metrics)."""
    from pipeline.data.store import decode_labels, decode_photos, label_column, photo_column
    from pipeline.evaluation.metrics.segmentation import confusion_matrix, segmentation_scores
    from pipeline.segmenter.file import Segmenter

    table = open_store(store_uri).read_table(split, resolution)
    labels = decode_labels(table.column(label_column(resolution)), resolution)
    photos = decode_photos(table.column(photo_column(resolution)), resolution)
    predictions = Segmenter(segmenter_data, num_scored_classes).predict(photos)
    return segmentation_scores(confusion_matrix(labels, predictions, num_scored_classes))


def export_and_register(config: SegmenterTrainConfig, checkpoint, store: Store, num_scored_classes: int) -> str:
    """The final weights as a TorchScript file with the class order inside, scored on the real
    val photos (metrics `val_miou`, `val_pixel_accuracy`), logged and registered into the
    active run. Returns the registered version."""
    import mlflow

    from pipeline.registry.segmenters import log_and_register_segmenter
    from pipeline.segmenter.file import save_torchscript

    with checkpoint.as_directory() as folder:
        saved = torch.load(Path(folder) / CHECKPOINT_FILE, weights_only=True)
    model = ExportedSegmenter(build_network(config.architecture, num_scored_classes))
    model.load_state_dict(saved["model"])
    with tempfile.TemporaryDirectory(prefix="crn-segmenter-") as folder:
        path = save_torchscript(model, store.schema.scored_class_names, Path(folder) / "segmenter.pt")
        if VAL_SPLIT in store.splits:
            found = score_on_photos(path.read_bytes(), config.store, VAL_SPLIT, str(config.resolution), num_scored_classes)
            mlflow.log_metrics({"val_miou": found.miou, "val_pixel_accuracy": found.pixel_accuracy})
        return log_and_register_segmenter(path, config.model_name, config.alias)
