"""The Cascaded Refinement Network generator (docs/model.md).

A cascade of refinement modules, one per resolution from 4x8 upward. Each module takes the
previous module's features, bilinearly upsampled to its own resolution, together with the
label map area-averaged to that resolution, and refines them with two conv3x3 -> layer norm
-> LeakyReLU(0.2) blocks. A 1x1 head on the top module gives 3K channels: K RGB images.
There is no noise input; diversity comes from the K heads and the loss (crn/losses.py).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from crn.config import CRNConfig
from crn.labels import label_pyramid
from crn.resolution import Resolution

LEAKY_SLOPE = 0.2
# The authors' layer norm (tf.contrib.slim.layer_norm) adds 1e-12 to the variance.
NORM_EPS = 1e-12


class RefinementModule(nn.Module):
    """conv3x3 -> layer norm -> LeakyReLU(0.2), twice (docs/model.md#refinement-modules)."""

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, padding=1, bias=False)
        # Layer norm over (C, H, W) per sample with a per-channel scale and shift is exactly
        # GroupNorm with a single group; InstanceNorm or LayerNorm([C, H, W]) would differ.
        self.norm1 = nn.GroupNorm(1, width, eps=NORM_EPS)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(1, width, eps=NORM_EPS)
        for conv in (self.conv1, self.conv2):
            nn.init.xavier_uniform_(conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.norm1(self.conv1(x)), LEAKY_SLOPE)
        return F.leaky_relu(self.norm2(self.conv2(x)), LEAKY_SLOPE)


class CRN(nn.Module):
    """Label map [B, L, H, W] (one-hot, float) -> K images [B, K, 3, H, W], RGB in [0, 255].

    The output is not clamped: the loss must see the raw values (docs/model.md#head-with-k-outputs).
    Clamp only when writing images (`to_uint8_images`).
    """

    def __init__(self, config: CRNConfig):
        super().__init__()
        self.config = config
        num_labels = config.num_classes
        # Modules named by their resolution ("4x8", "8x16", ...). Their input is the upsampled
        # features of the module below (none for 4x8) followed by the labels.
        self.modules_by_res = nn.ModuleDict()
        previous_width = 0
        for resolution, width in zip(config.resolutions, config.widths):
            self.modules_by_res[str(resolution)] = RefinementModule(previous_width + num_labels, width)
            previous_width = width
        # Head with bias, no norm, no activation: 3K planar channels (R of all K, G of all K, B).
        self.head = nn.Conv2d(previous_width, 3 * config.num_outputs, kernel_size=1, bias=True)
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def check_input(self, onehot: torch.Tensor) -> None:
        """Raise a one-line ValueError for a label map this model cannot take."""
        if onehot.dim() != 4:
            raise ValueError(f"CRN input must be a one-hot label map [B, L, H, W], got shape {tuple(onehot.shape)}")
        if not onehot.is_floating_point():
            raise ValueError(f"CRN input must be a float one-hot map (crn.labels.one_hot), got dtype {onehot.dtype}")
        height, width = onehot.shape[-2:]
        if not Resolution(height, width).is_crn_size:
            raise ValueError(
                f"label map {height}x{width} is not 2^n x 2^(n+1) with n >= 2 (4x8, 8x16, ..., 256x512, ...)"
            )
        top = self.config.top_resolution
        if (height, width) != top:
            raise ValueError(
                f"label map {height}x{width} does not match the model's top resolution {top}"
            )
        if onehot.shape[1] != self.config.num_classes:
            raise ValueError(
                f"label map has {onehot.shape[1]} channels but the model was built for "
                f"{self.config.num_classes} classes (void included)"
            )

    def forward(self, onehot: torch.Tensor) -> torch.Tensor:
        self.check_input(onehot)
        labels = label_pyramid(onehot, len(self.modules_by_res))  # coarse first, [B, L, h_i, w_i]
        features = None
        for module, label in zip(self.modules_by_res.values(), labels):
            if features is None:
                x = label  # [B, L, 4, 8]
            else:
                upsampled = F.interpolate(features, size=label.shape[-2:], mode="bilinear", align_corners=True)
                x = torch.cat([upsampled, label], dim=1)  # [B, d_{i-1} + L, h_i, w_i]
            features = module(x)  # [B, d_i, h_i, w_i]
        x = self.head(features)  # [B, 3K, H, W]
        rgb = (x + 1.0) / 2.0 * 255.0
        batch, _, height, width = rgb.shape
        k = self.config.num_outputs
        # Planar split: image k is channels (k, K+k, 2K+k).
        return rgb.view(batch, 3, k, height, width).transpose(1, 2)  # [B, K, 3, H, W]


def to_uint8_images(out: torch.Tensor) -> torch.Tensor:
    """CRN output [B, K, 3, H, W] -> uint8 [B, K, H, W, 3] for writing image files.

    Clamp to [0, 255], round half to even (torch.round), then cast.
    """
    if out.dim() != 5 or out.shape[2] != 3:
        raise ValueError(f"expected CRN output [B, K, 3, H, W], got shape {tuple(out.shape)}")
    pixels = out.detach().clamp(0.0, 255.0).round().to(torch.uint8)
    return pixels.permute(0, 1, 3, 4, 2).contiguous()  # [B, K, H, W, 3]
