"""Train a segmenter on a store's real photos with Ray Train, for data sets without a standard one.

    outcome = run(parse_segmenter_config(argv))         # what jobs/train_segmenter.py does

The evaluation (pipeline.evaluation.job) scores synthesized images by how well a segmenter
recovers their label maps. Cityscapes has the field's DRN-D-105; a toy or a user's data set
has none, so this job trains one: a torchvision segmentation architecture (LR-ASPP or
DeepLabV3 on a MobileNetV3-Large backbone) from scratch (no pretrained weights: nothing is
downloaded), on the store's `train` split at one resolution, cross-entropy with void
ignored, AdamW, horizontal flips. In order:

1. The store's training photos and labels go to the workers as a Ray Data dataset, held in
   the object store and, on each worker, in memory (a segmentation set at evaluation
   resolution is small).
2. `TorchTrainer.fit()` runs `train_loop_per_worker` (DDP over `--num-workers`); checkpoints
   (weights, optimizer, step) every `--checkpoint-every` steps and at the end. The same
   command (same run name) resumes from the latest.
3. The driver exports the final weights as a TorchScript file with the schema's class order
   inside (pipeline.evaluation.segmenter), scores it on the store's `val` split (the real
   photos' mIoU: what synthesized images are measured against), and logs and registers it
   in MLflow as `seg-<dataset>-<HxW>` with the alias `current`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from crn.resolution import Resolution
from pipeline.data.store import open_store
from pipeline.errors import UserError
from pipeline.options import at_least, from_argv, from_dict, identity_of, non_negative, option, positive, to_dict
from pipeline.records import start_job_run
from pipeline.runtime import init_ray, setup_mlflow, work_dir

ARCHITECTURES = ("lraspp-mobilenet-v3-large", "deeplabv3-mobilenet-v3-large")
TRAIN_SPLIT, VAL_SPLIT = "train", "val"
CHECKPOINT_FILE = "segmenter.pt"
AUTO = "auto"
# torchvision's MobileNetV3 sets BatchNorm momentum 0.01; in a run of a few hundred steps the
# running statistics then lag so far behind the weights that eval-mode predictions collapse
# to one class (seen here on the toy data). The PyTorch default keeps them current.
BATCHNORM_MOMENTUM = 0.1


@dataclass
class SegmenterTrainConfig:
    store: str = option(help="preprocessed store with photos (folder or s3://); trains on its train split",
                        identity=True)
    resolution: Resolution | None = option(None, "HxW to train at (the resolution the evaluation scores); default: "
                                                 "the store's top resolution", identity=True)
    architecture: str = option(ARCHITECTURES[0], "torchvision segmentation architecture, trained from scratch",
                               choices=ARCHITECTURES, identity=True)
    steps: int = option(600, "optimizer steps", check=at_least(1), identity=True)
    batch_size: int = option(8, "samples per worker per step", check=at_least(1), identity=True)
    lr: float = option(1e-3, "AdamW learning rate (constant)", check=positive, identity=True)
    weight_decay: float = option(1e-4, "AdamW weight decay", check=non_negative, identity=True)
    seed: int = option(0, "seed for initialisation, shuffling and flips", identity=True)
    num_workers: int = option(1, "Ray Train workers (DDP ranks)", check=at_least(1), identity=True)
    use_gpu: bool = option(False, "one GPU per worker")
    cpus_per_worker: float = option(1.0, "logical CPUs each worker reserves", check=positive)
    threads_per_worker: int = option(0, "torch threads per CPU worker; 0 = the node's cores divided among its workers",
                                     check=non_negative)
    log_every: int = option(20, "steps between loss reports", check=at_least(1))
    checkpoint_every: int = option(200, "steps between checkpoints (one is always written at the end)",
                                   check=at_least(1))
    storage_path: str = option(AUTO, "folder or s3:// prefix for runs and checkpoints; auto = <work dir>/ray_results")
    run_name: str = option(AUTO, "Ray Train run name; re-running with the same name resumes; auto = from the config")
    experiment: str = option("crn-segmenter", "MLflow experiment name")
    model_name: str = option(AUTO, "registered model name; auto = seg-<dataset>-<HxW>")
    alias: str = option("current", "alias the new registered version gets")
    dry_run: bool = option(False, "print the resolved configuration and exit")


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
    if "://" not in resolved.store:
        resolved.store = str(Path(resolved.store).expanduser().resolve())
    resolved.resolution = Resolution.parse(store.resolution(config.resolution or store.top_resolution))
    if resolved.storage_path == AUTO:
        resolved.storage_path = str(work_dir() / "ray_results")
    elif "://" not in resolved.storage_path:
        resolved.storage_path = str(Path(resolved.storage_path).expanduser().resolve())
    if resolved.run_name == AUTO:
        digest = hashlib.sha256(json.dumps(identity_of(resolved), sort_keys=True).encode()).hexdigest()[:10]
        resolved.run_name = f"segmenter-{resolved.resolution}-{digest}"
    if resolved.model_name == AUTO:
        resolved.model_name = f"seg-{dataset_name(store)}-{resolved.resolution}"
    return resolved


# ---------------------------------------------------------------- the network


def build_network(architecture: str, num_classes: int) -> torch.nn.Module:
    """A torchvision segmentation network with random weights (nothing downloaded)."""
    from torchvision.models import segmentation

    builder = {"lraspp-mobilenet-v3-large": segmentation.lraspp_mobilenet_v3_large,
               "deeplabv3-mobilenet-v3-large": segmentation.deeplabv3_mobilenet_v3_large}[architecture]
    kwargs = {"aux_loss": False} if architecture.startswith("deeplabv3") else {}
    network = builder(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = BATCHNORM_MOMENTUM
    return network


class ExportedSegmenter(torch.nn.Module):
    """The segmenter contract's face (pipeline.evaluation.segmenter): RGB in 0..1 -> class scores."""

    def __init__(self, network):  # (no annotation: TorchScript cannot read "torch.nn.Module" as a string)
        super().__init__()
        self.network = network
        # ImageNet statistics, the usual input normalisation of torchvision's backbones.
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network((images - self.mean) / self.std)["out"]


# ---------------------------------------------------------------- the loop on each worker


def train_loop_per_worker(loop_config: dict) -> dict:
    import ray.train
    import ray.train.torch
    import torch.nn.functional as F

    from pipeline.training.loop import quiet_report_log

    quiet_report_log()  # one line per report is noise here too
    config = from_dict(SegmenterTrainConfig, loop_config["config"])
    num_classes = loop_config["num_classes"]  # void (index num_classes) is ignored
    context = ray.train.get_context()
    rank = context.get_world_rank()
    device = ray.train.torch.get_device() if config.use_gpu else torch.device("cpu")
    if not config.use_gpu:
        torch.set_num_threads(config.threads_per_worker or max(1, os.cpu_count() // context.get_local_world_size()))
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    model = ExportedSegmenter(build_network(config.architecture, num_classes)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    step = 0
    if (checkpoint := ray.train.get_checkpoint()) is not None:
        with checkpoint.as_directory() as folder:
            saved = torch.load(Path(folder) / CHECKPOINT_FILE, weights_only=True)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        step = saved["step"]
    ddp_model = ray.train.torch.prepare_model(model, move_to_device=device)
    # The shard is read into memory once: a segmentation set at evaluation resolution is small
    # (96 photos at 64x128 are 3 MB), and re-reading it through Ray Data every epoch would
    # start a pipeline per epoch. Each step's samples and flips follow from (seed, step, rank)
    # alone, so a resumed run takes exactly the steps an uninterrupted one would.
    parts = list(ray.train.get_dataset_shard(TRAIN_SPLIT).iter_torch_batches(batch_size=256))
    photos = torch.cat([p["photo"] for p in parts]).permute(0, 3, 1, 2).contiguous()  # uint8 [N, 3, H, W]
    labels = torch.cat([p["label"] for p in parts]).long()  # [N, H, W]
    steps_per_epoch = len(labels) // config.batch_size
    history = []  # every step's loss in this attempt, for the driver to log
    while step < config.steps:
        epoch, index = divmod(step, steps_per_epoch)
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(_seed(config.seed, epoch, rank)))
        chosen = order[index * config.batch_size:(index + 1) * config.batch_size]
        photo, label = photos[chosen].to(device).float() / 255.0, labels[chosen].to(device)
        flip = torch.rand(len(chosen), generator=torch.Generator().manual_seed(_seed(config.seed, step, rank, 1))) < 0.5
        photo[flip], label[flip] = photo[flip].flip(-1), label[flip].flip(-1)
        loss = F.cross_entropy(ddp_model(photo), label, ignore_index=num_classes)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        history.append({"step": step, "loss": loss.item()})
        last = step == config.steps
        if step % config.log_every == 0 or step % config.checkpoint_every == 0 or last:
            report(model, optimizer, step, loss.item(), with_checkpoint=step % config.checkpoint_every == 0 or last,
                   rank=rank)
    return {"step": step, "history": history}


def _seed(*values: int) -> int:
    """A seed for each combination of values, independent of the others."""
    return int(np.random.SeedSequence(list(values)).generate_state(1)[0])


def report(model, optimizer, step: int, loss: float, with_checkpoint: bool, rank: int) -> None:
    import ray.train

    metrics = {"step": step, "loss": loss}
    if not with_checkpoint:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="crn-segmenter-") as folder:
        checkpoint = None
        if rank == 0:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step},
                       Path(folder) / CHECKPOINT_FILE)
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint)


# ---------------------------------------------------------------- the driver


@dataclass
class SegmenterOutcome:
    run_id: str
    model_name: str
    model_version: str
    uri: str  # models:/<name>/<version>
    val_miou: float  # on the store's real val photos (the oracle of the evaluation)
    val_pixel_accuracy: float


def fit(config: SegmenterTrainConfig, num_classes: int):
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipeline.fs import filesystem_for, is_s3

    storage_fs, storage_path = (None, config.storage_path)
    if is_s3(config.storage_path):
        storage_fs, storage_path = filesystem_for(config.storage_path)
    data = open_store(config.store).dataset(TRAIN_SPLIT, config.resolution).select_columns(["label", "photo"])
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": to_dict(config), "num_classes": num_classes},
        scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu,
                                     resources_per_worker={"CPU": config.cpus_per_worker,
                                                           **({"GPU": 1} if config.use_gpu else {})}),
        run_config=RunConfig(name=config.run_name, storage_path=storage_path, storage_filesystem=storage_fs,
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
        datasets={TRAIN_SPLIT: data.materialize()},
    )
    return trainer.fit()


def score_on_photos(segmenter_data: bytes, store_uri: str, split: str, resolution: str, num_classes: int):
    """The segmenter's scores on a split's real photos (pipeline.evaluation.metrics)."""
    from pipeline.data.store import decode_labels, decode_photos, label_column, photo_column
    from pipeline.evaluation.metrics import confusion_matrix, segmentation_scores
    from pipeline.evaluation.segmenter import Segmenter

    table = open_store(store_uri).read_table(split, resolution)
    labels = decode_labels(table.column(label_column(resolution)), resolution)
    photos = decode_photos(table.column(photo_column(resolution)), resolution)
    predictions = Segmenter(segmenter_data, num_classes).predict(photos)
    return segmentation_scores(confusion_matrix(labels, predictions, num_classes))


def export_and_register(config: SegmenterTrainConfig, checkpoint, store, num_classes: int) -> tuple[str, tuple]:
    """The final weights as a TorchScript file with the class order inside, scored on the real
    val photos, logged and registered into the active run. Returns (version, (mIoU, accuracy))."""
    import mlflow

    from pipeline.evaluation.segmenter import save_torchscript
    from pipeline.registry.segmenters import log_and_register_segmenter

    with checkpoint.as_directory() as folder:
        saved = torch.load(Path(folder) / CHECKPOINT_FILE, weights_only=True)
    model = ExportedSegmenter(build_network(config.architecture, num_classes))
    model.load_state_dict(saved["model"])
    with tempfile.TemporaryDirectory(prefix="crn-segmenter-") as folder:
        path = save_torchscript(model, store.schema.class_names[:num_classes], Path(folder) / "segmenter.pt")
        scores = (float("nan"), float("nan"))
        if VAL_SPLIT in store.splits:
            found = score_on_photos(path.read_bytes(), config.store, VAL_SPLIT, str(config.resolution), num_classes)
            scores = (found.miou, found.pixel_accuracy)
            mlflow.log_metrics({"val_miou": found.miou, "val_pixel_accuracy": found.pixel_accuracy})
        version = log_and_register_segmenter(path, config.model_name, config.alias)
    return version, scores


def start_or_resume_run(config: SegmenterTrainConfig):
    """The MLflow run of this Ray Train run: a finished earlier attempt's (found by its storage
    folder, with a registered version), else a new one with the config as params."""
    import mlflow

    from pipeline.fs import uri_join
    from pipeline.training.tracking import RUN_TAG, finished_run

    run_dir = uri_join(config.storage_path, config.run_name)
    description = (f"Segmenter ({config.architecture}, {config.resolution}) trained "
                   f"from scratch on the train photos of {config.store}, to score synthesized images.")
    if finished := finished_run(config.experiment, run_dir):
        return start_job_run(config.experiment, description=description, run_id=finished[0])
    active = start_job_run(config.experiment, description=description, run_name=config.run_name,
                           tags={RUN_TAG: run_dir})
    mlflow.log_params({key: str(value) for key, value in to_dict(config).items()})
    return active


def run(config: SegmenterTrainConfig) -> SegmenterOutcome:
    """The whole job for a parsed config (not a dry run: see jobs/train_segmenter.py)."""
    import mlflow

    config = resolve(config)
    store = open_store(config.store)
    num_classes = store.schema.void_index  # classes besides void
    init_ray(dashboard=True)  # Ray Train's state queries need it (pipeline.runtime.init_ray)
    setup_mlflow(config.experiment)
    with start_or_resume_run(config) as active:
        result = fit(config, num_classes)
        if result.checkpoint is None:
            raise UserError(f"segmenter run {config.run_name} ended without a checkpoint")
        tags = mlflow.get_run(active.info.run_id).data.tags
        if tags.get("crn.final_checkpoint") == result.checkpoint.path:  # a re-run of a finished run
            version = tags["crn.registered_version"]
            metrics = mlflow.get_run(active.info.run_id).data.metrics
            scores = (metrics.get("val_miou", float("nan")), metrics.get("val_pixel_accuracy", float("nan")))
        else:
            log_losses((result.return_value or {}).get("history", []))
            version, scores = export_and_register(config, result.checkpoint, store, num_classes)
            mlflow.set_tags({"crn.final_checkpoint": result.checkpoint.path, "crn.registered_version": version})
    uri = f"models:/{config.model_name}/{version}"
    print(f"trained segmenter {config.architecture} at {config.resolution} for {config.steps} steps; "
          f"real {VAL_SPLIT} photos: mIoU {scores[0]:.3f}, pixel accuracy {scores[1]:.3f}; registered {uri} "
          f"as @{config.alias}; MLflow run {active.info.run_id}")
    return SegmenterOutcome(active.info.run_id, config.model_name, version, uri, scores[0], scores[1])


def log_losses(history: list[dict]) -> None:
    """Every step's loss of the last attempt, in batches (MLflow's log_batch takes 1000 at most)."""
    import time

    import mlflow
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    now = int(time.time() * 1000)
    entries = [Metric("loss", record["loss"], now, record["step"]) for record in history]
    for start in range(0, len(entries), 1000):
        MlflowClient().log_batch(mlflow.active_run().info.run_id, metrics=entries[start:start + 1000])
