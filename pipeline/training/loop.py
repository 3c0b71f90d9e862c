"""The training loop each Ray Train worker runs: plain PyTorch, with Ray only at the edges.

Ray supplies the checkpoint to resume from (`get_checkpoint`), DDP set-up (`prepare_model`)
and the channel to the driver (`report`). Everything else is the loop of docs/recipe.md
as published: rows in a fresh order, one-hot labels, K images, the VGG loss, an Adam step.

Data order (pipeline.training.order). Every epoch is a fresh permutation of all training
rows, a function of (seed, epoch); each step's global batch is split between the ranks, so
their parts are disjoint and cover the epoch. Each worker reads its rows by index from the
store (pipeline.data.rows: one row group per read, an LRU cache of decoded row groups,
`--row-cache-mb`), the next batch in a background thread while the current step runs.
Rows beyond `world_size * batch * steps_per_epoch` are left out of that epoch, so every
rank takes the same number of steps.

Resume. A checkpoint holds the model, Adam's state, the step, the epoch, the batches already
taken in that epoch, the loss weights (and the per-layer sums gathered for recalibration),
the label schema and the RNG state. Resuming rebuilds all of it, recomputes the epoch's
order and starts at the first batch not yet taken, so a resumed run takes exactly the
steps an uninterrupted one would have.

Recalibration (docs/recipe.md#recalibration, `--recalibrate-after-epoch N`): over epoch N each layer's
unweighted term (its plain mean L1) is summed; when the epoch closes the sums are averaged
over its steps and ranks and every VGG layer weight is divided by its layer's mean. The
means and the new weights are reported with that step (MLflow metrics
`recalibration.<layer>` and `layer_weight.<layer>`) and kept in the checkpoint. An epoch is closed (counted, recalibrated) right
after its last batch, before that step's report, so a checkpoint there starts the next.
The worker count and batch size are fixed for a run (they are part of its default name).
Rank 0 writes the checkpoints; all ranks report at the same steps (every `log_every` and
`checkpoint_every` steps, and at the end).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from crn.checkpoint import capture_rng_state, load_checkpoint, make_checkpoint, restore_rng_state, save_checkpoint
from crn.config import CRNConfig
from crn.labels import one_hot
from crn.losses import NUM_LAYERS, CRNLoss, recalibrate
from crn.model import CRN, to_uint8_images
from crn.vgg import LAYER_NAMES, VGG19Features
from pipeline.data.rows import RowReader
from pipeline.data.store import TRAIN_SPLIT, open_store
from pipeline.fs import filesystem_for, uri_join, write_bytes_atomically
from pipeline.options import from_dict, to_dict
from pipeline.trainer import StepReports, quiet_report_log, worker_device
from pipeline.training import stages
from pipeline.training.config import TrainConfig, learning_rate
from pipeline.training.order import rank_batches
from pipeline.visualize import image_grid, png_bytes, schema_palette

CHECKPOINT_FILE = "checkpoint.pt"
GRID_SAMPLES = 2  # rows in an image grid


@dataclass
class WorkerPlan:
    """What every worker gets from the driver (pipeline.training.plan.TrainPlan.for_workers).

    It crosses the Ray boundary as `to_dict()` (Ray Train wants a dict) and is rebuilt with
    `from_dict()` on the worker.
    """

    config: TrainConfig  # resolved
    model_config: CRNConfig
    label_schema: dict
    loss_weights: list[float]  # the recipe's row, before any recalibration
    train_modules: list[str]
    steps_per_epoch: int  # batches each rank takes per epoch, fixed for the run
    train_samples: int  # rows in the store's training split (the permutation's length)
    run_dir: str  # <storage>/<run name>: image grids go under it
    init_weights: object = None  # ray.ObjectRef of the earlier stage's tensors, or None

    def to_dict(self) -> dict:
        return {**{f: getattr(self, f) for f in ("label_schema", "loss_weights", "train_modules", "steps_per_epoch",
                                                 "train_samples", "run_dir", "init_weights")},
                "config": to_dict(self.config), "model_config": self.model_config.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "WorkerPlan":
        return cls(**{**d, "config": from_dict(TrainConfig, d["config"]),
                      "model_config": CRNConfig.from_dict(d["model_config"])})


@dataclass
class TrainState:
    """Where the run stands; all of it goes into every checkpoint."""

    loss_weights: list[float]
    step: int = 0  # optimizer steps taken
    epoch: int = 0  # epochs completed
    batch_in_epoch: int = 0  # batches of the current epoch already taken
    term_sums: list[float] = field(default_factory=lambda: [0.0] * NUM_LAYERS)  # for recalibration
    term_count: int = 0
    recalibration_means: list[float] | None = None  # the measured term means, once recalibrated


def train_loop_per_worker(loop_config: dict) -> dict:
    quiet_report_log()
    plan = WorkerPlan.from_dict(loop_config)
    config = plan.config
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = worker_device(config.use_gpu, config.threads_per_worker)
    if config.use_gpu:
        # One input shape for the whole run: cuDNN times its algorithms once and keeps the fastest.
        torch.backends.cudnn.benchmark = True

    torch.manual_seed(config.seed)  # the same initial weights on every rank
    init_weights = ray.get(plan.init_weights) if plan.init_weights is not None else None  # from the object store
    model = build_model(plan, init_weights).to(device)
    vgg = place_loss_network(loss_network(config), device)
    optimizer = torch.optim.Adam(stages.trainable_parameters(model), lr=config.lr)
    state = TrainState(loss_weights=list(plan.loss_weights))
    if (checkpoint := ray.train.get_checkpoint()) is not None:
        state = restore(checkpoint, model, optimizer)
    resumed_from = state.step
    ddp_model = ray.train.torch.prepare_model(model, move_to_device=device)
    if config.compile:
        ddp_model, vgg = compile_modules(ddp_model, vgg)
    loss_fn = CRNLoss(vgg, state.loss_weights).to(device)
    reader = RowReader(open_store(config.store), TRAIN_SPLIT, str(config.resolution),
                       cache_bytes=config.row_cache_mb * 2**20)
    reports = Reporter(plan, rank, world_size, start_step=state.step)

    steps_per_epoch = plan.steps_per_epoch
    while state.epoch < config.epochs and not reached_step_limit(config, state):
        order = rank_batches(plan.train_samples, config.seed, state.epoch, rank, world_size, config.batch_size)
        assert len(order) == steps_per_epoch, (len(order), steps_per_epoch)
        # From the first batch not yet taken (a resumed run starts inside its epoch).
        for batch in prefetched(reader.read, order[state.batch_in_epoch:]):
            if reached_step_limit(config, state):
                break
            labels = torch.from_numpy(batch["label"]).to(device)  # [B, H, W] class indices
            onehot = one_hot(labels, model.config.num_classes)  # [B, L, H, W]
            photo = torch.from_numpy(batch["photo"]).to(device).permute(0, 3, 1, 2).float()  # [B, 3, H, W], 0..255
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, state.step)
            loss, terms, fake = train_step(ddp_model, loss_fn, optimizer, onehot, photo, config.precision)
            state.step += 1
            state.batch_in_epoch += 1
            if state.epoch + 1 == config.recalibrate_after_epoch:
                state.term_sums = [s + terms[name] for name, s in zip(LAYER_NAMES, state.term_sums)]
                state.term_count += 1
            reports.record(state.step, {"loss": loss, **terms})
            epoch_done = state.batch_in_epoch == steps_per_epoch
            # Every `image_every` steps, and at the run's last step whatever its number: a run
            # shorter than `image_every` still shows what it learned.
            last_step = reached_step_limit(config, state) or (epoch_done and state.epoch + 1 >= config.epochs)
            if rank == 0 and config.image_every and (state.step % config.image_every == 0 or last_step):
                reports.save_grid(state.step, labels, fake, batch["photo"])
            if epoch_done:  # close the epoch before reporting, so a checkpoint here starts the next one
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                if state.epoch == config.recalibrate_after_epoch:
                    state.recalibration_means = measured_term_means(state, device)
                    state.loss_weights = list(recalibrate(state.loss_weights, state.recalibration_means))
                    loss_fn = CRNLoss(vgg, state.loss_weights).to(device)
                    reports.note_recalibration(state.recalibration_means, state.loss_weights)
            if state.step % config.log_every == 0 or state.step % config.checkpoint_every == 0:
                reports.send_state(state, model, optimizer, with_checkpoint=state.step % config.checkpoint_every == 0)

    if reports.last_checkpoint_step != state.step and state.step > resumed_from:
        reports.send_state(state, model, optimizer, with_checkpoint=True)
    return {"step": state.step, "epoch": state.epoch, "resumed_from_step": resumed_from,
            "steps_per_s": reports.steady_steps_per_s(), "loss_weights": state.loss_weights,
            "recalibration_means": state.recalibration_means, "row_groups_read": reader.groups_read}


def prefetched(read: Callable[[Sequence[int]], dict], batches: Sequence[Sequence[int]]) -> Iterator[dict]:
    """read(batch) for each batch in turn, the next one read in a background thread while the
    caller works on the current one (pyarrow's decompression runs outside the GIL)."""
    if len(batches) == 0:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="crn-rows") as pool:
        pending = pool.submit(read, batches[0])
        try:
            for following in batches[1:]:
                current = pending.result()
                pending = pool.submit(read, following)
                yield current
            yield pending.result()
        finally:
            pending.cancel()


def build_model(plan: WorkerPlan, init_weights: dict | None) -> CRN:
    """The CRN of this stage: earlier-stage weights, frozen modules, memory options applied."""
    model = CRN(plan.model_config)
    if init_weights:
        stages.load_earlier_stage(model, init_weights)
    stages.freeze_all_but(model, plan.train_modules)
    if plan.config.activation_checkpointing:
        stages.enable_activation_checkpointing(model)
    return model.train()


def loss_network(config: TrainConfig) -> VGG19Features:
    """The frozen VGG-19. Random weights (tests, smoke runs) are drawn from the run's seed, so
    every rank and every resumed attempt computes the same loss."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return VGG19Features(config.vgg_weights)


def place_loss_network(vgg: VGG19Features, device: torch.device) -> VGG19Features:
    """Move the loss network to `device`, on a CPU in channels_last.

    On CPUs (oneDNN), VGG-19's convolutions run faster in channels_last: they need only
    forward passes and input gradients, which that layout speeds up, and no weight
    gradients, which it slows down (the generator, which has them, stays in NCHW). A crn-mid
    training step on the 2-core machine: 1.147 s against 1.239 s best of 9, 1.226 against
    1.298 median, the same loss. The convolutions pick their layout from the
    weights', so the images fed to it need no conversion. GPUs keep NCHW here:
    bench/bench_gpu.py measures both layouts for the whole step.
    """
    vgg = vgg.to(device)
    return vgg.to(memory_format=torch.channels_last) if device.type == "cpu" else vgg


def compile_modules(model: torch.nn.Module, vgg: VGG19Features) -> tuple[torch.nn.Module, torch.nn.Module]:
    """`--compile`: the generator (DDP-wrapped or not) and the loss network through torch.compile.

    Compiled after DDP wrapping, so that Dynamo splits the graph at DDP's gradient buckets
    and the all-reduces still overlap the backward pass. Checkpoints keep saving the plain
    model, whose parameter names the compiled wrapper would prefix.
    """
    return torch.compile(model), torch.compile(vgg)


def train_step(model, loss_fn: CRNLoss, optimizer, onehot, photo, precision: str):
    """One Adam step on one batch -> (loss, per-layer terms, the K outputs detached)."""
    with torch.autocast(device_type=onehot.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        fake = model(onehot)  # [B, K, 3, H, W]
        loss, terms = loss_fn(fake, photo, onehot)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # DDP averages the gradients over ranks here
    optimizer.step()
    return loss.item(), terms, fake.detach()


def reached_step_limit(config: TrainConfig, state: TrainState) -> bool:
    return bool(config.steps) and state.step >= config.steps


def measured_term_means(state: TrainState, device: torch.device) -> list[float]:
    """docs/recipe.md#recalibration: each layer's mean term over the recalibration epoch, averaged over ranks."""
    totals = torch.tensor(state.term_sums + [float(state.term_count)], dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
    return (totals[:-1] / totals[-1]).tolist()


def restore(checkpoint: ray.train.Checkpoint, model: CRN, optimizer) -> TrainState:
    with checkpoint.as_directory() as folder:
        ckpt = load_checkpoint(Path(folder) / CHECKPOINT_FILE)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    restore_rng_state(ckpt["rng"])
    extra = ckpt["extra"]
    return TrainState(loss_weights=list(ckpt["loss_weights"]), step=ckpt["step"], epoch=ckpt["epoch"],
                      batch_in_epoch=extra["batch_in_epoch"], term_sums=list(extra["term_sums"]),
                      term_count=extra["term_count"], recalibration_means=extra.get("recalibration_means"))


class Reporter(StepReports):
    """The CRN's reports (pipeline.trainer.StepReports): every step's loss and layer terms, the
    recalibration, image grids, and its checkpoints."""

    def __init__(self, plan: WorkerPlan, rank: int, world_size: int, start_step: int):
        super().__init__(rank, plan.config.batch_size * world_size, start_step)
        self.plan, self.config = plan, plan.config
        self.image = None  # grid written since the last report

    def note_recalibration(self, means: list[float], weights: list[float]) -> None:
        """The measured term means and the new layer weights, logged with the step that closed the epoch."""
        self.history[-1].update({f"recalibration.{name}": m for name, m in zip(LAYER_NAMES, means)})
        self.history[-1].update({f"layer_weight.{name}": w for name, w in zip(LAYER_NAMES, weights)})

    def save_grid(self, step: int, labels: torch.Tensor, fake: torch.Tensor, photos: np.ndarray) -> None:
        n = min(GRID_SAMPLES, fake.shape[0])
        grid = image_grid(labels[:n].cpu().numpy(), to_uint8_images(fake[:n].float()).cpu().numpy(),
                          photos[:n], schema_palette(self.plan.label_schema))
        self.image = f"images/step_{step:08d}.png"
        fs, path = filesystem_for(uri_join(self.plan.run_dir, self.image))
        write_bytes_atomically(fs, path, png_bytes(grid))

    def send_state(self, state: TrainState, model: CRN, optimizer, with_checkpoint: bool) -> None:
        def write_checkpoint(folder: Path) -> None:
            extra = {"batch_in_epoch": state.batch_in_epoch, "term_sums": state.term_sums,
                     "term_count": state.term_count, "recalibration_means": state.recalibration_means,
                     "config": to_dict(self.config)}
            save_checkpoint(folder / CHECKPOINT_FILE, make_checkpoint(
                model, optimizer=optimizer, step=state.step, epoch=state.epoch,
                loss_weights=state.loss_weights, label_schema=self.plan.label_schema,
                rng=capture_rng_state(), extra=extra))

        self.send(state.step, state.epoch, write_checkpoint if with_checkpoint else None,
                  **({"image": self.image} if self.image else {}))
        self.image = None
