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

import os
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
# VGG-19 in channels_last: see the measurements in the module docstring.
VGG_CHANNELS_LAST = False


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


def run(quick: bool = False, vgg_channels_last: bool = VGG_CHANNELS_LAST) -> list[dict]:
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    load_before = os.getloadavg()[0]
    config = make_config(PRESET, NUM_CLASSES)
    model = CRN(config)
    vgg = VGG19Features("random")
    if vgg_channels_last:
        vgg.to(memory_format=torch.channels_last)
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
    # same conditions on a machine that others may be using too.
    step_times: list[float] = []
    rates: dict[tuple, float] = {}
    for _ in range(2 if quick else 4):
        start = time.perf_counter()
        train_step()
        step_times.append(time.perf_counter() - start)
        for shape in candidates:
            for layout in (torch.contiguous_format, torch.channels_last):
                rate = conv3x3_flop_rate(*shape, repeats=2, memory_format=layout)
                if rate > rates.get((shape, layout), 0.0):
                    rates[(shape, layout)] = rate
    step_time = min(step_times)
    achieved = flops / step_time
    (peak_shape, peak_layout), peak = max(rates.items(), key=lambda item: item[1])
    n, c_in, c_out, h, w = peak_shape
    layout_name = "channels_last" if peak_layout == torch.channels_last else "NCHW"

    ratio = achieved / peak
    compared = (
        f"{PRESET} training step (K={config.num_outputs}, batch 1, {config.top_resolution[0]}x"
        f"{config.top_resolution[1]}, CRNLoss with random-weight VGG-19"
        f"{' in channels_last' if vgg_channels_last else ''}, Adam): {flops / 1e9:.1f} GFLOP "
        f"(conv+matmul fwd+bwd, FlopCounterMode) in {step_time:.3f} s (best of {len(step_times)}) = "
        f"{achieved / 1e9:.1f} GFLOP/s, vs the best of the step's {len(candidates)} heaviest 3x3 conv shapes "
        f"timed alone in NCHW and channels_last: {peak / 1e9:.1f} GFLOP/s (N={n} {c_in}->{c_out} {h}x{w} "
        f"{layout_name}); {threads} threads, load average {load_before:.1f} before / "
        f"{os.getloadavg()[0]:.1f} after on {os.cpu_count()} cores"
    )
    return [
        {"name": "train_step_peak_fraction", "value": ratio, "unit": "ratio", "goal": f">= {GOAL}", "compared": compared},
        {"name": "train_step_seconds", "value": step_time, "unit": "s", "goal": "n/a", "compared": f"{PRESET} step, best of {len(step_times)}"},
    ]
