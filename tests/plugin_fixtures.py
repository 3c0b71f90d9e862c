"""A second generator and an extra metric, each added the way a plug-in is: one class and one line.

`ToyGenerator` is a network of another kind than the CRN (one 1x1 convolution from the label
channels to K images); `register_toy_generator()` is its registry line. `MeanBrightness` is
a metric the evaluation does not ship. Ray workers import this module by name (it sits on
the driver's sys.path), as they would a plug-in's package.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from crn.generators import Generator, register_generator
from crn.resolution import Resolution
from pipeline.evaluation.metrics import Metric, MetricResult, ScoringInputs


@dataclass(frozen=True)
class ToyConfig:
    num_classes: int
    num_outputs: int
    height: int
    width: int

    @property
    def top_resolution(self) -> Resolution:
        return Resolution(self.height, self.width)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ToyConfig":
        return cls(**values)


class ToyGenerator(torch.nn.Module):
    """One-hot maps [B, L, H, W] -> [B, K, 3, H, W] in 0..255: a 1x1 convolution and a sigmoid."""

    def __init__(self, config: ToyConfig):
        super().__init__()
        self.config = config
        self.head = torch.nn.Conv2d(config.num_classes, 3 * config.num_outputs, kernel_size=1)

    def forward(self, onehot: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = onehot.shape
        out = 255 * torch.sigmoid(self.head(onehot))
        return out.view(batch, self.config.num_outputs, 3, height, width)


TOY_GENERATOR = Generator("toy", ToyConfig, ToyGenerator)


def register_toy_generator() -> None:
    register_generator(TOY_GENERATOR)


class MeanBrightness(Metric):
    """The mean of every synthesized pixel on the 0..1 scale: a metric the evaluation does not ship."""

    name = "brightness"

    def __init__(self, settings):
        super().__init__(settings)
        self.total, self.pixels = 0.0, 0

    def update(self, inputs: ScoringInputs) -> None:
        self.total += float(np.asarray(inputs.variants, dtype=np.float64).sum() / 255.0)
        self.pixels += int(inputs.variants.size)

    def merge(self, other: "MeanBrightness") -> None:
        self.total += other.total
        self.pixels += other.pixels

    def compute(self) -> MetricResult:
        return MetricResult(values={"brightness": self.total / self.pixels})
