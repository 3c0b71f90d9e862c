"""The tiny preset learns: it overfits one label map / photo pair on the CPU.

    .venv/bin/python -m pytest tests/test_overfit.py -q

The whole training path runs (one-hot labels, the generator, VGG-19 features, the masked
per-class loss, Adam); a random-weight VGG-19 stands in for the ImageNet one.
"""
from __future__ import annotations

import torch

from crn.labels import one_hot
from crn.losses import LAYER_WEIGHTS, CRNLoss
from crn.model import CRN
from crn.presets import make_config
from crn.vgg import VGG19Features

# A street-like scene: road below, sky above, two objects; colours from the Cityscapes palette.
MAX_STEPS = 150
PALETTE = torch.tensor([[128, 64, 128], [70, 130, 180], [220, 20, 60], [0, 0, 142], [107, 142, 35]])


def toy_pair() -> tuple[torch.Tensor, torch.Tensor]:
    index_map = torch.zeros(1, 32, 64, dtype=torch.long)
    index_map[:, 16:, :] = 1
    index_map[:, 4:14, 10:30] = 2
    index_map[:, 20:30, 40:60] = 3
    index_map[:, 0:8, 50:64] = 4
    photo = PALETTE[index_map].permute(0, 3, 1, 2).float()  # [1, 3, 32, 64]
    return index_map, photo


def test_tiny_preset_overfits_one_pair():
    torch.manual_seed(0)
    index_map, photo = toy_pair()
    onehot = one_hot(index_map, 5)
    model = CRN(make_config("crn-tiny", num_classes=5, num_outputs=1))
    loss_fn = CRNLoss(VGG19Features("random"), LAYER_WEIGHTS["uncalibrated"])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    # About 50 steps are needed (seconds on an idle CPU); stop as soon as the loss is down 10x.
    while len(losses) < MAX_STEPS and (not losses or losses[-1] > losses[0] / 10):
        loss, _ = loss_fn(model(onehot), photo, onehot)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] <= losses[0] / 10, f"loss went from {losses[0]:.2f} to {losses[-1]:.2f} in {MAX_STEPS} steps"
