"""A stand-in for the published DRN-D-105 Cityscapes weights: the same keys and shapes, random values.

`published_layout` writes out drn_d_105_cityscapes.pth's keys and shapes from fyu/drn's layer
table (drn.py: DRN arch 'D', Bottleneck, layers [1, 1, 3, 4, 23, 3, 1, 1], channels (16, 32,
64, 128, 256, 512, 512, 512); segment.py: DRNSeg's base, seg and up), independently of
pipeline.segmenter.drn, so that a test loading the stand-in checks the module against the
file's layout. The file is written like the published one: a plain state dict without
`num_batches_tracked` keys, in torch's legacy (pre-zip) format.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import torch

NUM_CLASSES = 19
STEM = ((3, 16, 7), (16, 16, 3), (16, 32, 3))  # base.0, base.1, base.2: (in, out, kernel)
STAGES = ((3, 64, 3), (4, 128, 4), (5, 256, 23), (6, 512, 3))  # (base index, planes, blocks)
TOP = ((7, 2048, 512), (8, 512, 512))  # base.7, base.8: 3x3 convs (index, in, out)


def published_layout() -> "OrderedDict[str, tuple[int, ...]]":
    """Key -> shape of DRNSeg(drn_d_105, 19)'s state dict, without num_batches_tracked."""
    shapes: OrderedDict[str, tuple[int, ...]] = OrderedDict()

    def conv(key: str, cin: int, cout: int, k: int) -> None:
        shapes[f"{key}.weight"] = (cout, cin, k, k)

    def bn(key: str, c: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{key}.{name}"] = (c,)

    for index, (cin, cout, k) in enumerate(STEM):
        conv(f"base.{index}.0", cin, cout, k)
        bn(f"base.{index}.1", cout)
    inplanes = 32
    for index, planes, blocks in STAGES:
        for block in range(blocks):
            key = f"base.{index}.{block}"
            conv(f"{key}.conv1", inplanes, planes, 1)
            bn(f"{key}.bn1", planes)
            conv(f"{key}.conv2", planes, planes, 3)
            bn(f"{key}.bn2", planes)
            conv(f"{key}.conv3", planes, 4 * planes, 1)
            bn(f"{key}.bn3", 4 * planes)
            if block == 0:
                conv(f"{key}.downsample.0", inplanes, 4 * planes, 1)
                bn(f"{key}.downsample.1", 4 * planes)
            inplanes = 4 * planes
    for index, cin, cout in TOP:
        conv(f"base.{index}.0", cin, cout, 3)
        bn(f"base.{index}.1", cout)
    shapes["seg.weight"] = (NUM_CLASSES, 512, 1, 1)
    shapes["seg.bias"] = (NUM_CLASSES,)
    shapes["up.weight"] = (NUM_CLASSES, 1, 16, 16)
    return shapes


def hand_bilinear_kernel() -> torch.Tensor:
    """segment.py's fill_up_weights for a 16x16 kernel, element by element."""
    f = math.ceil(16 / 2)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    return torch.tensor([[(1 - abs(i / f - c)) * (1 - abs(j / f - c)) for j in range(16)] for i in range(16)])


def random_drn_d_105_state(seed: int = 0) -> "OrderedDict[str, torch.Tensor]":
    """Random weights in the published layout; BatchNorm at identity (running mean 0, var 1,
    scale 1, shift 0) and convs at variance 1 / fan-in, so activations stay finite through the
    33 residual blocks; `up` holds the bilinear kernel, as in the published file."""
    generator = torch.Generator().manual_seed(seed)
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, shape in published_layout().items():
        if key == "up.weight":
            state[key] = hand_bilinear_kernel().expand(shape).contiguous()
        elif len(shape) == 4:
            state[key] = torch.randn(shape, generator=generator).mul_(1 / math.sqrt(math.prod(shape[1:])))
        elif key.endswith(("running_var", ".weight")):
            state[key] = torch.ones(shape)
        elif key == "seg.bias":
            state[key] = torch.randn(shape, generator=generator).mul_(0.1)
        else:
            state[key] = torch.zeros(shape)
    return state


def write_random_drn_d_105(path: str | Path, seed: int = 0) -> Path:
    """The stand-in file at `path`: legacy format, no num_batches_tracked, like the published file."""
    path = Path(path)
    torch.save(random_drn_d_105_state(seed), path, _use_new_zipfile_serialization=False)
    return path


def save_like_published(state: dict, path: str | Path) -> Path:
    """Another state dict written the same way (for the tests' damaged copies)."""
    torch.save(state, Path(path), _use_new_zipfile_serialization=False)
    return Path(path)
