"""GPU check: is the GPU path ready? Training step, synthesis, 1024p, DDP and torch.compile.

    make bench-gpu                          # = python -m bench.run_all bench_gpu
    python -m bench.bench_gpu [--quick]     # the same: prints the table, writes bench/results.jsonl

On a machine with CUDA, in this order, within a time budget of 7.5 minutes (a part that
its estimate no longer fits is skipped with one printed line; compiling is the big one):
1. Training step of crn-256p (K=9, batch 1, 256x512; the full loss: VGG-19 on the photo and
   the K outputs, per-class diversity loss; Adam): the Ray Train loop's own `train_step`
   (pipeline.training.loop) under bf16 autocast, in NCHW and in channels_last, then with
   activation checkpointing in the faster layout. Time per step: the warm-up steps (cuDNN
   algorithm search, allocations) left out, then wall time over the timed steps, CUDA
   synchronised before and after. FLOP/s = the step's FLOPs / that time, and its fraction of
   the GPU's dense bf16 peak (bench/peaks.py, keyed by device name). Peak memory:
   torch.cuda.max_memory_allocated over the timed steps (weights, Adam state, activations).
2. Synthesis at 256p: the bare forward pass (crn.inference.generate_images, what the
   synthesis actor calls, bf16, the actor's cuDNN settings) at batch sizes 1 to 32, the best
   taken; then the real synthesis job (pipeline.synthesis.job: Ray Data, one GPU actor,
   --use-gpu --precision bf16, PNGs written) at that batch size over a toy store.
3. crn-1024p step with activation checkpointing, training the recipe's modules (512x1024,
   1024x2048 and the head, docs/recipe.md#progressive-stages): whether it fits, its memory and time.
4. With two or more GPUs: the same 256p step as 2 DDP ranks (NCCL) through Ray Train,
   against 1 rank; with fewer, one printed line.
5. torch.compile, the way `--compile` applies it (pipeline.training.loop.compile_modules):
   compile time, and step time against part 1's eager step.

How the FLOPs are counted: torch.utils.flop_counter.FlopCounterMode around one real step
(bench/flops.py) adds up every convolution and matrix product that runs, forward and
backward, from their shapes, a multiply-add as 2 FLOPs. Backward counts only the gradients
autograd computes: no weight gradients for the frozen VGG-19, no input gradient for the
first convolution. Element-wise work (layer norm, activations, pooling, upsampling, Adam)
is not counted. crn-256p: 8.29 TFLOP = generator forward 2.15 + its backward 4.30 + VGG-19
forward on the photo and 9 outputs 0.97 + VGG-19 backward to the outputs 0.87 (counted on
the meta device). These are model FLOPs: activation checkpointing's recomputed forward is
not counted, so its cost shows as a longer step at the same FLOPs.

Without CUDA one line says so and the same functions run on the CPU with tiny presets
(crn-tiny for 256p, crn-small for 1024p; synthesis in fp32, as the job allows bf16 on
GPUs only); compiling is skipped there by the budget (inductor's C++ build of the crn-tiny
step took 342 s on the 2-core machine). tests/test_bench_gpu.py runs the parts the same way,
so this code keeps working where no GPU is. Random VGG-19 weights and an untrained model
throughout: weights do not change the work. Every figure carries the device's name.
"""
from __future__ import annotations

import contextlib
import gc
import math
import resource
import shutil
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bench.bench_train_step import make_batch
from bench.flops import count_flops
from bench.peaks import dense_bf16_peak
from crn.inference import generate_images
from crn.losses import LAYER_WEIGHTS, CRNLoss
from crn.model import CRN
from crn.presets import make_config
from crn.vgg import VGG19Features
from pipeline.training import stages
from pipeline.training.loop import compile_modules, train_step
from pipeline.training.recipe import ALL_MODULES, ANY_DATASET, recipe_for

NUM_CLASSES = 20  # Cityscapes: 19 classes + void
LR = 1e-4  # the published recipe's Adam step (docs/recipe.md#optimizer-and-data)
PEAK_FRACTION_GOAL = ">= 0.5"
SYNTH_IMAGES_PER_S_GOAL = ">= 150"  # per GPU, at 256p
GIB = 2**30


@dataclass(frozen=True)
class Settings:
    """What to measure: the GPU's real presets, or tiny ones that run the same code on a CPU."""

    preset: str  # parts 1, 2, 4, 5: the 256p model
    large_preset: str  # part 3: the 1024p model
    synth_samples: int  # label maps the synthesis job turns into images
    synth_batch_sizes: tuple[int, ...]  # tried for the bare forward pass; the best one runs the job
    warmup_steps: int
    timed_steps: int
    timing_cap_s: float  # a variant's timed steps stop early past this (at least one runs)
    budget_s: float  # the whole run
    # Seconds a part needs at least; one that the budget no longer fits is skipped.
    synth_estimate_s: float
    large_estimate_s: float
    ddp_estimate_s: float
    compile_estimate_s: float


GPU = Settings("crn-256p", "crn-1024p", synth_samples=256, synth_batch_sizes=(1, 2, 4, 8, 16, 32), warmup_steps=3,
               timed_steps=10, timing_cap_s=15.0, budget_s=450.0, synth_estimate_s=90.0, large_estimate_s=30.0,
               ddp_estimate_s=90.0, compile_estimate_s=150.0)
GPU_QUICK = Settings("crn-256p", "crn-1024p", synth_samples=64, synth_batch_sizes=(1, 4, 16, 32), warmup_steps=2,
                     timed_steps=4, timing_cap_s=5.0, budget_s=300.0, synth_estimate_s=60.0, large_estimate_s=20.0,
                     ddp_estimate_s=90.0, compile_estimate_s=150.0)
CPU = Settings("crn-tiny", "crn-small", synth_samples=8, synth_batch_sizes=(1, 2, 4), warmup_steps=1,
               timed_steps=2, timing_cap_s=10.0, budget_s=240.0, synth_estimate_s=60.0, large_estimate_s=20.0,
               ddp_estimate_s=120.0, compile_estimate_s=400.0)


class Budget:
    """The run's time budget: the GPU check must finish in minutes on one GPU."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def allows(self, part: str, estimate_s: float) -> bool:
        if self.left() >= estimate_s:
            return True
        say(f"{part}: skipped, {max(self.left(), 0):.0f} s of the time budget left and it needs about {estimate_s:.0f} s")
        return False


def say(line: str) -> None:
    print(f"bench_gpu: {line}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the device


def device_name(device: str | torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"cpu: {line.split(':', 1)[1].strip()}"
    return "cpu"


def synchronize(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: str | torch.device) -> float:
    """Bytes: the GPU's peak allocation since the last reset; on a CPU the process's peak
    resident memory (Linux reports KiB), which no reset lowers."""
    if torch.device(device).type == "cuda":
        return float(torch.cuda.max_memory_allocated(device))
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def release(device: str | torch.device) -> None:
    """Give back what the previous variant held, so the next one's peak memory is its own."""
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- a training step on fixed data


@dataclass
class TrainingStep:
    """One training step as the Ray Train loop takes it (pipeline.training.loop.train_step),
    on one fixed batch: call it for a step, get the loss."""

    model: torch.nn.Module  # plain, DDP-wrapped or compiled
    loss_fn: CRNLoss
    optimizer: torch.optim.Optimizer
    onehot: torch.Tensor  # [1, L, H, W]
    photo: torch.Tensor  # [1, 3, H, W], 0..255
    precision: str
    losses: list[float] = field(default_factory=list)  # every step's loss so far, in order

    def __call__(self) -> float:
        loss, _, _ = train_step(self.model, self.loss_fn, self.optimizer, self.onehot, self.photo, self.precision)
        self.losses.append(loss)
        return loss


def make_training_step(preset: str, device: str | torch.device, *, precision: str = "bf16",
                       checkpointing: bool = False, channels_last: bool = False, compiled: bool = False,
                       train_modules: str = ALL_MODULES, seed: int = 0) -> TrainingStep:
    """The model, loss and Adam of a training run (pipeline.training.loop.build_model and
    loss_network, with the same stage and memory options), random VGG-19 weights, seeded."""
    config = make_config(preset, NUM_CLASSES)
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the training loop sets it on GPUs
    torch.manual_seed(seed)
    model = CRN(config)
    stages.freeze_all_but(model, stages.parse_train_modules(train_modules, config))
    if checkpointing:
        stages.enable_activation_checkpointing(model)
    vgg = VGG19Features("random")
    onehot, photo = make_batch(config, seed)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device, memory_format=layout).train()
    vgg.to(device, memory_format=layout)
    onehot = onehot.to(device).contiguous(memory_format=layout)
    photo = photo.to(device).contiguous(memory_format=layout)
    optimizer = torch.optim.Adam(stages.trainable_parameters(model), lr=LR)
    module = model
    if compiled:
        module, vgg = compile_modules(model, vgg)
    loss_fn = CRNLoss(vgg, LAYER_WEIGHTS["uncalibrated"]).to(device)
    return TrainingStep(module, loss_fn, optimizer, onehot, photo, precision)


@dataclass
class Timing:
    seconds: float  # per timed step
    steps: int  # timed steps
    losses: list[float]  # every step's loss from the step's first on, in order (TrainingStep.losses)
    peak_memory: float  # bytes (peak_memory)


def time_steps(step: TrainingStep, device: str | torch.device, warmup: int, steps: int,
               cap_s: float = math.inf) -> Timing:
    """Seconds per step after `warmup` steps: `steps` steps, fewer if they pass `cap_s`."""
    for _ in range(warmup):
        step()
    reset_peak_memory(device)  # after the warm-up: Adam's state exists, the peak is a steady step's
    synchronize(device)
    start = time.perf_counter()
    timed = 0
    while timed < steps and (timed == 0 or time.perf_counter() - start < cap_s):
        step()
        timed += 1
    synchronize(device)
    return Timing((time.perf_counter() - start) / timed, timed, list(step.losses), peak_memory(device))


def figure(name: str, value: float, unit: str, goal: str, compared: str, device: str) -> dict:
    return {"name": name, "value": value, "unit": unit, "goal": goal, "compared": compared, "device": device}


# ---------------------------------------------------------------- 1. the 256p training step


@dataclass
class StepResults:
    figures: list[dict]
    flops: int  # of one step
    channels_last: bool  # the faster layout
    timing: Timing  # of the faster layout, without checkpointing
    checkpointed: Timing


def training_step_figures(settings: Settings, device: str) -> StepResults:
    name, gpu = device_name(device), torch.device(device).type == "cuda"
    config = make_config(settings.preset, NUM_CLASSES)
    height, width = config.top_resolution
    what = (f"{settings.preset} training step (K={config.num_outputs}, batch 1, {height}x{width}, CRNLoss with "
            f"random-weight VGG-19, Adam), bf16 autocast")
    flops = 0
    timings: dict[bool, Timing] = {}
    for channels_last in (False, True):
        step = make_training_step(settings.preset, device, channels_last=channels_last)
        if not flops:
            flops = count_flops(step)  # one real step: the same work in every variant
        timings[channels_last] = time_steps(step, device, settings.warmup_steps, settings.timed_steps,
                                            settings.timing_cap_s)
        del step
        release(device)
    channels_last = timings[True].seconds < timings[False].seconds
    best = timings[channels_last]
    layout = "channels_last" if channels_last else "NCHW"
    step = make_training_step(settings.preset, device, checkpointing=True, channels_last=channels_last)
    checkpointed = time_steps(step, device, settings.warmup_steps, settings.timed_steps, settings.timing_cap_s)
    del step
    release(device)

    achieved = flops / best.seconds
    timed = f"{best.steps} timed steps after {settings.warmup_steps} warm-up"
    memory = "torch.cuda.max_memory_allocated" if gpu else "process peak RSS (CPU: not per variant)"
    figures = [
        figure("gpu_train_step_tflop", flops / 1e12, "TFLOP", "n/a",
               f"FLOPs of one {what}: convolutions and matmuls forward and backward (FlopCounterMode)", name),
        figure("gpu_train_step_s", best.seconds, "s", "n/a", f"{what}, {layout}, {timed}", name),
        figure("gpu_train_step_tflops", achieved / 1e12, "TFLOP/s", "n/a",
               f"{flops / 1e12:.3g} TFLOP / {best.seconds * 1e3:.1f} ms, {what}, {layout}", name),
        figure("gpu_channels_last_speedup", timings[False].seconds / timings[True].seconds, "x", "n/a",
               f"step time NCHW {timings[False].seconds * 1e3:.1f} ms / channels_last "
               f"{timings[True].seconds * 1e3:.1f} ms, {what}", name),
        figure("gpu_train_step_memory_gib", best.peak_memory / GIB, "GiB", "n/a", f"{memory}, {what}, {layout}", name),
        figure("gpu_checkpointing_time_ratio", checkpointed.seconds / best.seconds, "x", "n/a",
               f"step time with activation checkpointing {checkpointed.seconds * 1e3:.1f} ms / without "
               f"{best.seconds * 1e3:.1f} ms, {what}, {layout}", name),
        figure("gpu_checkpointing_memory_ratio", checkpointed.peak_memory / best.peak_memory, "x", "n/a",
               f"peak memory with activation checkpointing {checkpointed.peak_memory / GIB:.2f} GiB / without "
               f"{best.peak_memory / GIB:.2f} GiB ({memory}), {what}", name),
    ]
    peak = dense_bf16_peak(name)
    if peak is None:
        say(f"no dense bf16 peak for {name!r} in bench/peaks.py: no fraction of peak")
    else:
        say(f"{name}: dense bf16 peak {peak / 1e12:.0f} TFLOP/s (bench/peaks.py)")
        figures.append(figure("gpu_train_step_peak_fraction", achieved / peak, "ratio", PEAK_FRACTION_GOAL,
                              f"{achieved / 1e12:.1f} TFLOP/s of a {what} ({layout}) / the dense bf16 peak "
                              f"{peak / 1e12:.0f} TFLOP/s", name))
    return StepResults(figures, flops, channels_last, best, checkpointed)


# ---------------------------------------------------------------- 2. synthesis


@contextlib.contextmanager
def synthesis_cudnn_settings():
    """The synthesis actor's cuDNN settings (pipeline.synthesis.actor: fixed algorithms, so
    fixed pixels) for the bare forward pass, the training settings back afterwards."""
    saved = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved


def forward_images_per_s(model: CRN, labels: np.ndarray, device: str, bf16: bool, batch_size: int) -> float:
    """Images/s of generate_images over `labels` in batches of `batch_size`, after one warm-up batch."""
    generate_images(model, labels[:batch_size], device=device, bf16=bf16, batch_size=batch_size)
    synchronize(device)
    start = time.perf_counter()
    images = generate_images(model, labels, device=device, bf16=bf16, batch_size=batch_size)  # on the host: synced
    return images.shape[0] * images.shape[1] / (time.perf_counter() - start)


def synthesis_figures(settings: Settings, device: str, scratch: Path) -> list[dict]:
    from bench.bench_synthesize import make_checkpoint, make_store, quiet, scratch_mlflow
    from crn.checkpoint import load_checkpoint, model_from_checkpoint
    from pipeline.data.store import decode_labels, label_column, open_store
    from pipeline.synthesis.config import parse_synthesize_config
    from pipeline.synthesis.job import run as synthesize

    name, gpu = device_name(device), torch.device(device).type == "cuda"
    config = make_config(settings.preset, NUM_CLASSES)
    resolution = f"{config.top_resolution[0]}x{config.top_resolution[1]}"
    store = make_store(scratch, settings.synth_samples, config.top_resolution)
    checkpoint = scratch / "model.pt"
    make_checkpoint(checkpoint, settings.preset)
    labels = decode_labels(open_store(store).read_table("val", resolution).column(label_column(resolution)), resolution)
    threads = torch.get_num_threads()

    model = model_from_checkpoint(load_checkpoint(checkpoint)).to(device)
    # At least two batches: the job records its pace after its first batch (once its actor is up).
    sizes = [b for b in settings.synth_batch_sizes if 2 * b <= len(labels)]
    with synthesis_cudnn_settings():
        forward = {b: forward_images_per_s(model, labels, device, gpu, b) for b in sizes}
    del model
    release(device)
    batch = max(forward, key=forward.get)
    say("bare forward images/s by batch size: " + ", ".join(f"{b}: {v:.1f}" for b, v in forward.items()))

    compute = ["--use-gpu", "--precision", "bf16"] if gpu else ["--threads-per-actor", str(threads)]
    with scratch_mlflow(scratch) as experiment, quiet():
        outcome = synthesize(parse_synthesize_config([
            "--model", str(checkpoint), "--store", str(store), "--split", "val", "--output", str(scratch / "out"),
            "--batch-size", str(batch), "--num-actors", "1", "--experiment", experiment, *compute]))
    job = outcome.metrics["images_per_s"]
    after_ready = outcome.metrics["images_per_s_after_first_batch"]
    what = (f"{settings.preset} ({resolution}, K={config.num_outputs}), {settings.synth_samples} label maps, "
            f"batches of {batch}, {'1 GPU, bf16' if gpu else f'CPU fp32, {threads} threads'}")
    forward_text = ", ".join(f"{b}: {v:.0f}" for b, v in forward.items())
    return [
        figure("gpu_synth_forward_images_per_s", forward[batch], "images/s", "n/a",
               f"bare forward pass (crn.inference.generate_images: one-hot, network, uint8 to the host) at the best "
               f"batch size (images/s by batch size: {forward_text}), {what}", name),
        figure("gpu_synth_job_images_per_s", after_ready, "images/s", SYNTH_IMAGES_PER_S_GOAL if gpu else "n/a",
               f"the synthesis job (Ray Data, 1 actor, PNGs written) once its actor is up, as it records it "
               f"(images_per_s_after_first_batch: from the first batch back to the last); a batch took "
               f"{outcome.metrics['forward_s_per_batch_median']:.3f} s in the actor's forward pass and "
               f"{outcome.metrics['write_s_per_batch_median']:.3f} s to encode and write (medians), {what}", name),
        figure("gpu_synth_job_end_to_end_images_per_s", job, "images/s", "n/a",
               f"the same job end to end as it measures itself (actor start-up and model build included: a fixed "
               f"cost that a longer job amortises), {what}", name),
        figure("gpu_synth_job_vs_forward", after_ready / forward[batch], "x", "n/a",
               f"job images/s once its actor is up / bare forward images/s, side by side, {what}", name),
    ]


# ---------------------------------------------------------------- 3. the 1024p step


def large_step_figures(settings: Settings, device: str) -> list[dict]:
    name, gpu = device_name(device), torch.device(device).type == "cuda"
    config = make_config(settings.large_preset, NUM_CLASSES)
    # The 1024p recipe's rule (pipeline.training.recipe): the top two modules and the head
    # learn. The same rule on the CPU's stand-in preset.
    train_modules = ",".join([str(r) for r in config.resolutions[-2:]] + ["head"])
    assert settings.large_preset != "crn-1024p" or train_modules == recipe_for("crn-1024p", ANY_DATASET).train_modules
    what = (f"{settings.large_preset} training step ({config.top_resolution}, K={config.num_outputs}, batch 1, "
            f"modules {train_modules} learning as in the recipe, activation checkpointing, bf16 autocast)")
    try:
        step = make_training_step(settings.large_preset, device, checkpointing=True, train_modules=train_modules)
        flops = count_flops(step)
        timing = time_steps(step, device, warmup=1, steps=max(2, settings.timed_steps // 3), cap_s=settings.timing_cap_s)
    except torch.cuda.OutOfMemoryError as exc:
        say(f"{settings.large_preset} does not fit: {str(exc).splitlines()[0]}")
        return [figure("gpu_1024p_fits", 0.0, "yes=1", "== 1", f"{what}: out of memory", name)]
    finally:
        step = None
        release(device)
    total = torch.cuda.get_device_properties(device).total_memory if gpu else 0
    of_total = f" of {total / GIB:.0f} GiB" if gpu else " (process peak RSS)"
    return [
        figure("gpu_1024p_fits", 1.0, "yes=1", "== 1", f"{what}: {timing.peak_memory / GIB:.1f} GiB{of_total}", name),
        figure("gpu_1024p_step_s", timing.seconds, "s", "n/a",
               f"{what}, {timing.steps} timed steps after 1 warm-up: {flops / 1e12:.3g} TFLOP (the checkpointed "
               f"modules' recomputed forward included), {flops / timing.seconds / 1e12:.1f} TFLOP/s", name),
        figure("gpu_1024p_memory_gib", timing.peak_memory / GIB, "GiB", "n/a", f"peak memory{of_total}, {what}", name),
    ]


# ---------------------------------------------------------------- 4. DDP through Ray Train


def ddp_worker(loop_config: dict) -> dict:
    """Every rank: the 256p step under DDP (Ray Train's NCCL process group), a fixed number
    of steps so that all ranks take the same (a time cap could let them disagree and hang)."""
    import ray.train.torch

    device = ray.train.torch.get_device()
    step = make_training_step(loop_config["preset"], device)
    step.model = ray.train.torch.prepare_model(step.model, move_to_device=device)
    timing = time_steps(step, device, loop_config["warmup"], loop_config["steps"])
    return {"seconds": timing.seconds}


def ddp_seconds_per_step(settings: Settings, ranks: int, scratch: Path, use_gpu: bool = True) -> float:
    """Seconds per step of `ranks` DDP ranks (rank 0's), one GPU each (NCCL), or CPU ranks (gloo)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        ddp_worker,
        train_loop_config={"preset": settings.preset, "warmup": settings.warmup_steps, "steps": settings.timed_steps},
        scaling_config=ScalingConfig(num_workers=ranks, use_gpu=use_gpu),
        # A fresh name: Ray Train resumes a run of the same name and storage.
        run_config=RunConfig(name=f"bench-gpu-ddp-{ranks}-{uuid.uuid4().hex[:8]}", storage_path=str(scratch / "ray")),
    )
    return trainer.fit().return_value["seconds"]


def ddp_figures(settings: Settings, device: str, scratch: Path) -> list[dict]:
    gpus = torch.cuda.device_count() if torch.device(device).type == "cuda" else 0
    if gpus < 2:
        say(f"DDP: skipped, {gpus} GPU(s) here and a 2-rank step needs 2")
        return []
    name = device_name(device)
    one, two = ddp_seconds_per_step(settings, 1, scratch), ddp_seconds_per_step(settings, 2, scratch)
    what = f"{settings.preset} step, batch 1 per rank, bf16, Ray Train TorchTrainer, NCCL"
    return [
        figure("gpu_ddp_2rank_step_s", two, "s", "n/a", f"{what}, 2 ranks (1 rank: {one * 1e3:.1f} ms)", name),
        figure("gpu_ddp_2rank_efficiency", one / two, "x", "n/a",
               f"samples/s of 2 ranks / twice that of 1 rank (= step time 1 rank / 2 ranks), {what}", name),
    ]


# ---------------------------------------------------------------- 5. torch.compile


def compile_figures(settings: Settings, device: str, eager: StepResults) -> list[dict]:
    name = device_name(device)
    step = make_training_step(settings.preset, device, channels_last=eager.channels_last, compiled=True)
    start = time.perf_counter()
    step()  # compiles the forward and backward graphs
    synchronize(device)
    compile_s = time.perf_counter() - start
    timing = time_steps(step, device, settings.warmup_steps, settings.timed_steps, settings.timing_cap_s)
    del step
    release(device)
    what = f"{settings.preset} training step, bf16, {'channels_last' if eager.channels_last else 'NCHW'}"
    # The same seed, batch and layout: the first steps must agree but for rounding.
    eager_loss, compiled_loss = eager.timing.losses[0], timing.losses[0]
    return [
        figure("gpu_compile_speedup", eager.timing.seconds / timing.seconds, "x", "n/a",
               f"eager step {eager.timing.seconds * 1e3:.1f} ms / compiled step {timing.seconds * 1e3:.1f} ms "
               f"(torch.compile of generator and VGG-19 as --compile does), {what}; above 1, --compile pays", name),
        figure("gpu_compile_first_step_s", compile_s, "s", "n/a",
               f"the first compiled step, compilation included, {what}", name),
        figure("gpu_compile_loss_difference", abs(compiled_loss - eager_loss) / abs(eager_loss), "ratio", "<= 0.01",
               f"|first-step loss compiled {compiled_loss:.6g} - eager {eager_loss:.6g}| / eager, {what}", name),
    ]


# ---------------------------------------------------------------- all of it


def measure(settings: Settings, device: str) -> list[dict]:
    """Every part in turn within the budget. A part that fails is printed with its traceback,
    the others still run, and a `gpu_parts_failed` figure names it."""
    from pipeline.runtime import init_ray

    budget = Budget(settings.budget_s)
    name = device_name(device)
    say(f"device {name}; presets {settings.preset} and {settings.large_preset}; budget {settings.budget_s:.0f} s")
    # Before any part: synthesis and DDP share one Ray instance, and Ray Train's state
    # queries need its dashboard (pipeline.runtime.init_ray).
    init_ray(dashboard=True)
    scratch = Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    figures: list[dict] = []
    failures: list[str] = []
    step: StepResults | None = None

    def attempt(part: str, estimate_s: float, fn) -> object:
        if not budget.allows(part, estimate_s):
            return None
        start = time.perf_counter()
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 -- one broken part must not hide the others' figures
            traceback.print_exc()
            failures.append(f"{part}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            return None
        if result:
            say(f"{part}: {time.perf_counter() - start:.0f} s")
        return result

    try:
        step = attempt("training step", 0.0, lambda: training_step_figures(settings, device))
        if step is not None:
            figures += step.figures
        figures += attempt("synthesis", settings.synth_estimate_s,
                           lambda: synthesis_figures(settings, device, scratch)) or []
        figures += attempt("1024p step", settings.large_estimate_s, lambda: large_step_figures(settings, device)) or []
        figures += attempt("DDP", 0.0 if torch.cuda.device_count() < 2 else settings.ddp_estimate_s,
                           lambda: ddp_figures(settings, device, scratch)) or []
        if step is not None:
            figures += attempt("torch.compile", settings.compile_estimate_s,
                               lambda: compile_figures(settings, device, step)) or []
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if failures:
        figures.append(figure("gpu_parts_failed", len(failures), "parts", "== 0", "; ".join(failures), name))
    return figures


def run(quick: bool = False) -> list[dict]:
    if torch.cuda.is_available():
        return measure(GPU_QUICK if quick else GPU, "cuda")
    say("no CUDA GPU on this machine: the same code paths on the CPU with tiny presets (not GPU figures)")
    return measure(CPU, "cpu")


if __name__ == "__main__":
    from bench.run_all import main

    sys.exit(main(["bench_gpu", *sys.argv[1:]]))
