"""Counting the floating-point work of a piece of PyTorch code, and timing a 3x3 convolution.

FLOPs are counted with `torch.utils.flop_counter.FlopCounterMode`, which derives them from
the shapes of the matrix products and convolutions that actually run, forward and backward
(a backward convolution counts only the gradients autograd asks for: none for the frozen
VGG-19 weights). Element-wise work (normalisation, activations, pooling, the optimizer) is
not counted: it is cheap in FLOPs, so a step's FLOP/s against a convolution's FLOP/s shows
how much time goes to anything but the convolutions that define the model's cost.
"""
from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs (multiply and add counted separately) of the convolutions and matmuls `fn` runs."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def conv3x3_flops(batch: int, in_channels: int, out_channels: int, height: int, width: int) -> int:
    """Forward FLOPs of a stride-1, padding-1 3x3 convolution: 2 * MACs."""
    return 2 * batch * out_channels * height * width * in_channels * 9


def best_times(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Best wall-clock and best process CPU seconds of `fn` over `repeats` calls.

    CPU time (all threads of this process) barely moves when other processes share the
    cores, so it complements wall time on a busy machine; on an idle one both threads run
    all the time and CPU time is the thread count times wall time.
    """
    best_wall = best_cpu = float("inf")
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        best_cpu = min(best_cpu, time.process_time() - cpu)
        best_wall = min(best_wall, time.perf_counter() - wall)
    return best_wall, best_cpu


def conv3x3_times(
    batch: int, in_channels: int, out_channels: int, height: int, width: int,
    repeats: int = 5, memory_format: torch.memory_format = torch.contiguous_format,
) -> tuple[float, float]:
    """Best wall and CPU seconds of one 3x3 convolution forward pass of this shape."""
    x = torch.randn(batch, in_channels, height, width).contiguous(memory_format=memory_format)
    weight = torch.randn(out_channels, in_channels, 3, 3).contiguous(memory_format=memory_format)
    with torch.no_grad():
        F.conv2d(x, weight, padding=1)  # first call: primitive creation, memory allocation
        return best_times(lambda: F.conv2d(x, weight, padding=1), repeats)
