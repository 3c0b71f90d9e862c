"""Label maps as the network sees them: one-hot channels and the area-averaged pyramid.

A class-index map (void = the last index, docs/design.md#label-maps-and-schemas) becomes L channels that sum to
one at every pixel (docs/model.md#input-labels). Each coarser level is the 2x2 box average of
the level above it, so coarse modules see soft labels: the fraction of each class under a
coarse pixel. Nearest-neighbour subsampling would throw that information away.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def one_hot(index_map: torch.Tensor, num_classes: int) -> torch.Tensor:
    """LongTensor [B, H, W] of class indices -> FloatTensor [B, L, H, W] of 0/1 channels."""
    if index_map.dim() != 3:
        raise ValueError(f"label map must be [B, H, W] class indices, got shape {tuple(index_map.shape)}")
    index_map = index_map.long()
    if index_map.numel() and (index_map.min() < 0 or index_map.max() >= num_classes):
        raise ValueError(
            f"label map holds class ids {int(index_map.min())}..{int(index_map.max())}, "
            f"outside 0..{num_classes - 1} of a {num_classes}-class schema"
        )
    onehot = F.one_hot(index_map, num_classes)  # [B, H, W, L]
    return onehot.permute(0, 3, 1, 2).float().contiguous()  # [B, L, H, W]


def label_pyramid(onehot: torch.Tensor, num_levels: int) -> list[torch.Tensor]:
    """The one-hot map at `num_levels` resolutions, coarse first, the input itself last.

    Level i-1 is the 2x2 area average of level i, applied recursively from the top
    (docs/model.md#input-labels).
    """
    levels = [onehot]
    for _ in range(num_levels - 1):
        levels.append(F.avg_pool2d(levels[-1], kernel_size=2))  # [B, L, H/2, W/2]
    return levels[::-1]
