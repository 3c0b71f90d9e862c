"""The segmenter's training loop on each Ray Train worker: plain PyTorch, Ray at the edges.

Cross-entropy with void ignored, AdamW at a constant rate, horizontal flips. Ray supplies the
checkpoint to resume from, DDP set-up and the channel to the driver (pipeline.trainer's
`StepReports`: every step's loss reaches the MLflow run through the same callback as the
CRN's). All ranks report at the same steps (every `log_every` and `checkpoint_every` steps,
and at the end); rank 0 writes the checkpoints (weights, optimizer, step).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.nn.functional as F

from pipeline.data.store import TRAIN_SPLIT
from pipeline.options import from_dict
from pipeline.segmenter.config import SegmenterTrainConfig
from pipeline.segmenter.network import ExportedSegmenter, build_network
from pipeline.trainer import StepReports, quiet_report_log, worker_device

CHECKPOINT_FILE = "segmenter.pt"


def train_loop_per_worker(loop_config: dict) -> dict:
    quiet_report_log()
    config = from_dict(SegmenterTrainConfig, loop_config["config"])
    num_scored_classes = loop_config["num_scored_classes"]  # void (index num_scored_classes) is ignored
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = worker_device(config.use_gpu, config.threads_per_worker)
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    model = ExportedSegmenter(build_network(config.architecture, num_scored_classes)).to(device)
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
    # and the rows in key order alone, so a resumed run takes exactly the steps an
    # uninterrupted one would, whatever order Ray Data's blocks arrived in.
    rows = rows_in_key_order(ray.train.get_dataset_shard(TRAIN_SPLIT).iter_batches(batch_size=256,
                                                                                     batch_format="numpy"))
    photos = torch.from_numpy(rows["photo"]).permute(0, 3, 1, 2).contiguous()  # uint8 [N, 3, H, W]
    labels = torch.from_numpy(rows["label"]).long()  # [N, H, W]
    steps_per_epoch = len(labels) // config.batch_size
    reports = StepReports(rank, config.batch_size * world_size, start_step=step)
    while step < config.steps:
        epoch, index = divmod(step, steps_per_epoch)
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(_seed(config.seed, epoch, rank)))
        chosen = order[index * config.batch_size:(index + 1) * config.batch_size]
        photo, label = photos[chosen].to(device).float() / 255.0, labels[chosen].to(device)
        flip = torch.rand(len(chosen), generator=torch.Generator().manual_seed(_seed(config.seed, step, rank, 1))) < 0.5
        photo[flip], label[flip] = photo[flip].flip(-1), label[flip].flip(-1)
        loss = F.cross_entropy(ddp_model(photo), label, ignore_index=num_scored_classes)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        reports.record(step, {"loss": loss.item()})
        with_checkpoint = step % config.checkpoint_every == 0 or step == config.steps
        if step % config.log_every == 0 or with_checkpoint:
            write = _checkpoint_writer(model, optimizer, step) if with_checkpoint else None
            reports.send(step, step // steps_per_epoch, write)
    return {"step": step, "steps_per_s": reports.steady_steps_per_s()}


def rows_in_key_order(batches) -> dict[str, np.ndarray]:
    """The batches' rows concatenated and sorted by their `key` (pipeline.segmenter.data):
    blocks that finish in another order (a loaded machine, another cluster) give the same rows."""
    parts = list(batches)
    keys = np.concatenate([p["key"] for p in parts])
    order = np.argsort(keys, kind="stable")
    return {name: np.concatenate([p[name] for p in parts])[order] for name in ("key", "label", "photo")}


def _seed(*values: int) -> int:
    """A seed for each combination of values, independent of the others."""
    return int(np.random.SeedSequence(list(values)).generate_state(1)[0])


def _checkpoint_writer(model: torch.nn.Module, optimizer, step: int):
    def write(folder: Path) -> None:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step},
                   folder / CHECKPOINT_FILE)

    return write
