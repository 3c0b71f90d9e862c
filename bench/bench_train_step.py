"""Training-step efficiency: how close a CRN training step runs to this machine's conv peak.

    python -m bench.run_all bench_train_step [--quick]

One step of the crn-mid preset (128x256, K outputs, batch 1, the real CRNLoss: generator
forward, VGG-19 on the real photo and the K outputs, masked per-class loss, backward, Adam)
is timed, and its FLOPs counted (bench/flops.py: convolutions and matmuls, forward and
backward). Achieved FLOP/s is divided by the best FLOP/s of the 3x3 convolutions this very
step runs, each timed alone at its own shape in both memory layouts, with the same threads,
in alternation with the steps. Random VGG-19 weights: the weights do not change the work.

Figures: the ratio in wall-clock time (the goal), the same ratio in process CPU time (which
other processes on the machine barely disturb), and the step's wall time.

It runs in a child process set up as a CPU training worker is (bench.child: the allocator
settings of pipeline.runtime.CPU_WORKER_MALLOC_ENV), not in the process that ran the other
benchmarks, whose heap it would otherwise find.

What limits it (2-core AMD EPYC, torch 2.14 oneDNN, 2 threads): about 88% of the step is
convolution, running at about 0.7 of the best single-shape rate (backward weight
gradients and the 64-channel VGG layers are the slow ones); the rest is element-wise work
(pooling, ReLU/LeakyReLU backward, the L1 differences, upsampling, normalisation).
The loss network is placed as the training loop places it on a CPU
(pipeline.training.loop.place_loss_network: VGG-19 in channels_last, about 7% off the step).
Tried: the whole step in channels_last is slower (weight-gradient convolutions run 2-3x
slower in that layout here).
"""
from __future__ import annotations

import os
import sys

import torch
import torch.nn as nn

from bench.child import run_child, serve_child
from bench.flops import best_times, conv3x3_flops, conv3x3_times, count_flops
from crn.labels import one_hot
from crn.losses import LAYER_WEIGHTS, CRNLoss
from crn.model import CRN
from crn.presets import make_config
from crn.vgg import VGG19Features
from pipeline.training.loop import place_loss_network

PRESET = "crn-mid"
NUM_CLASSES = 20  # Cityscapes: 19 classes + void
GOAL = 0.6


def make_batch(config, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A blocky label map (16x16 blocks of random classes) and a random photo."""
    generator = torch.Generator().manual_seed(seed)
    height, width = config.top_resolution
    blocks = torch.randint(0, config.num_classes, (1, height // 16, width // 16), generator=generator)
    index_map = blocks.repeat_interleave(16, dim=1).repeat_interleave(16, dim=2)
    photo = torch.rand(1, 3, height, width, generator=generator) * 255
    return one_hot(index_map, config.num_classes), photo


def conv_shapes_of(fn, modules: list[nn.Module]) -> dict[tuple[int, ...], int]:
    """The 3x3 convolutions `fn` runs forward, as {(N, C_in, C_out, H, W): times run}."""
    shapes: dict[tuple[int, ...], int] = {}

    def record(module, inputs, output):
        n, c, h, w = inputs[0].shape
        key = (n, c, module.out_channels, h, w)
        shapes[key] = shapes.get(key, 0) + 1

    hooks = [
        m.register_forward_hook(record)
        for root in modules
        for m in root.modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
    ]
    try:
        fn()
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


def run(quick: bool = False) -> list[dict]:
    """The figures, measured in a child process set up as a CPU training worker is (bench.child)."""
    return run_child("bench.bench_train_step", {"quick": quick})


def measure(quick: bool) -> list[dict]:
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    load_before = os.getloadavg()[0]
    config = make_config(PRESET, NUM_CLASSES)
    model = CRN(config)
    vgg = place_loss_network(VGG19Features("random"), torch.device("cpu"))
    loss_fn = CRNLoss(vgg, LAYER_WEIGHTS["uncalibrated"])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    onehot, photo = make_batch(config)

    def train_step() -> None:
        loss, _ = loss_fn(model(onehot), photo, onehot)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    # The first step warms up (allocations, kernel selection) and is the one counted.
    flops = count_flops(train_step)
    shapes = conv_shapes_of(train_step, [model, vgg])
    by_work = sorted(shapes, key=lambda s: conv3x3_flops(*s) * shapes[s], reverse=True)
    candidates = by_work[: 4 if quick else 8]

    # Steps and the peak are measured in alternation, best of each, so that both see the
    # same conditions on a machine that other processes may be using too.
    step_wall = step_cpu = float("inf")
    conv_wall: dict[tuple, float] = {}
    conv_cpu: dict[tuple, float] = {}
    rounds = 2 if quick else 6
    for _ in range(rounds):
        wall, cpu = best_times(train_step, repeats=1)
        step_wall, step_cpu = min(step_wall, wall), min(step_cpu, cpu)
        for shape in candidates:
            for layout in (torch.contiguous_format, torch.channels_last):
                wall, cpu = conv3x3_times(*shape, repeats=2, memory_format=layout)
                key = (shape, layout)
                conv_wall[key] = min(conv_wall.get(key, float("inf")), wall)
                conv_cpu[key] = min(conv_cpu.get(key, float("inf")), cpu)

    def peak_of(times: dict[tuple, float]) -> tuple[float, str]:
        (shape, layout), seconds = min(times.items(), key=lambda item: item[1] / conv3x3_flops(*item[0][0]))
        n, c_in, c_out, h, w = shape
        layout_name = "channels_last" if layout == torch.channels_last else "NCHW"
        return conv3x3_flops(*shape) / seconds, f"N={n} {c_in}->{c_out} {h}x{w} {layout_name}"

    peak_wall, peak_wall_shape = peak_of(conv_wall)
    peak_cpu, peak_cpu_shape = peak_of(conv_cpu)
    ratio_wall = flops / step_wall / peak_wall
    ratio_cpu = flops / step_cpu / peak_cpu
    setup = (
        f"{PRESET} training step (K={config.num_outputs}, batch 1, {config.top_resolution[0]}x"
        f"{config.top_resolution[1]}, CRNLoss with random-weight VGG-19"
        f" in channels_last as a CPU worker places it, Adam): {flops / 1e9:.1f} GFLOP "
        f"(conv+matmul fwd+bwd, FlopCounterMode)"
    )
    conditions = (
        f"{threads} threads, load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after "
        f"on {os.cpu_count()} cores"
    )
    against = f"the best of the step's {len(candidates)} heaviest 3x3 conv shapes timed alone (NCHW and channels_last)"
    return [
        {
            "name": "train_step_peak_fraction", "value": ratio_wall, "unit": "ratio", "goal": f">= {GOAL}",
            "compared": f"{setup} in {step_wall:.3f} s wall (best of {rounds}) = {flops / step_wall / 1e9:.1f} "
            f"GFLOP/s, vs {against}: {peak_wall / 1e9:.1f} GFLOP/s ({peak_wall_shape}); {conditions}",
        },
        {
            "name": "train_step_peak_fraction_cpu_time", "value": ratio_cpu, "unit": "ratio", "goal": "n/a",
            "compared": f"the same in process CPU time, which other load barely moves: step {step_cpu:.3f} "
            f"CPU-s = {flops / step_cpu / 1e9:.1f} GFLOP per CPU-s vs {peak_cpu / 1e9:.1f} ({peak_cpu_shape}); "
            f"{conditions}",
        },
        {
            "name": "train_step_seconds", "value": step_wall, "unit": "s", "goal": "n/a",
            "compared": f"{PRESET} step wall time, best of {rounds}; {conditions}",
        },
    ]


if __name__ == "__main__":
    serve_child(measure)
    for figure in run(quick="--quick" in sys.argv[1:]):
        print(f"{figure['name']:34s} {figure['value']:8.3f} {figure['unit']:6s} goal {figure['goal']:7s} {figure['compared']}")
