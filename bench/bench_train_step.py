"""Training-step efficiency: how close a CRN training step runs to this machine's conv peak.

    python -m bench.run_all bench_train_step [--quick]

One step of the crn-mid preset (128x256, K outputs, batch 1, the real CRNLoss: generator
forward, VGG-19 on the real photo and the K outputs, masked per-class loss, backward, Adam)
is timed, and its FLOPs counted (bench/flops.py: convolutions and matmuls, forward and
backward). Achieved FLOP/s is divided by the best FLOP/s of the 3x3 convolutions this very
step runs, each timed alone at its own shape, with the same threads, in the same run.
Random VGG-19 weights: the weights do not change the work.
"""
from __future__ import annotations

import time

import torch
import torch.nn as nn

from bench.flops import conv3x3_flop_rate, conv3x3_flops, count_flops
from crn.labels import one_hot
from crn.losses import LAYER_WEIGHTS, CRNLoss
from crn.model import CRN
from crn.presets import make_config
from crn.vgg import VGG19Features

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
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    config = make_config(PRESET, NUM_CLASSES)
    model = CRN(config)
    vgg = VGG19Features("random")
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
    times = []
    for _ in range(2 if quick else 5):
        start = time.perf_counter()
        train_step()
        times.append(time.perf_counter() - start)
    step_time = min(times)
    achieved = flops / step_time

    # Peak: the fastest of the step's own heaviest 3x3 convolution shapes, timed alone.
    by_work = sorted(shapes, key=lambda s: conv3x3_flops(*s[:3], *s[3:]) * shapes[s], reverse=True)
    candidates = by_work[: 3 if quick else 8]
    rates = {s: conv3x3_flop_rate(s[0], s[1], s[2], s[3], s[4], repeats=3 if quick else 5) for s in candidates}
    peak_shape = max(rates, key=rates.get)
    peak = rates[peak_shape]
    n, c_in, c_out, h, w = peak_shape

    ratio = achieved / peak
    compared = (
        f"{PRESET} training step (K={config.num_outputs}, batch 1, {config.top_resolution[0]}x"
        f"{config.top_resolution[1]}, CRNLoss with random-weight VGG-19, Adam): {flops / 1e9:.1f} GFLOP "
        f"(conv+matmul fwd+bwd, FlopCounterMode) in {step_time:.3f} s best of {len(times)} = "
        f"{achieved / 1e9:.1f} GFLOP/s, vs the best of its {len(candidates)} heaviest 3x3 conv shapes "
        f"alone: {peak / 1e9:.1f} GFLOP/s (N={n} {c_in}->{c_out} {h}x{w}); {threads} threads"
    )
    return [
        {"name": "train_step_peak_fraction", "value": ratio, "unit": "ratio", "goal": f">= {GOAL}", "compared": compared},
        {"name": "train_step_seconds", "value": step_time, "unit": "s", "goal": "", "compared": f"{PRESET} step, best of {len(times)}"},
    ]
