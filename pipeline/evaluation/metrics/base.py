"""What a metric is: one accumulator, updated batch by batch where the images are, merged, computed.

    metric = SegmentationMetric(settings)        # one per scoring actor's batch
    metric.update(inputs)                        # in the actor: a batch's label maps, photos, variants
    total.merge(metric)                          # on the driver, in any order
    result = total.compute()                     # MetricResult: values and per-class columns

The scoring actor (pipeline.evaluation.scoring) hands every metric the same `ScoringInputs`,
which runs the segmenter and the Inception network only when a metric first asks for their
outputs, and at most once per batch. A metric's state must add up over samples, so any
number of actors and any batch split give the same totals.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable

import numpy as np


@dataclass(frozen=True)
class MetricSettings:
    """What every metric may need to set itself up; the same on the driver and in the actors."""

    num_scored_classes: int  # classes a segmenter predicts: the schema's without void
    fid: bool  # Inception weights are at hand (pipeline.evaluation.metrics.fid)
    fid_note: str = ""  # why not, when they are not
    fid_backend: str = "pytorch-fid"  # whose FID (pipeline.evaluation.fid_backends): the libraries' numbers differ


@dataclass
class MetricResult:
    values: dict[str, float | None]  # metric name -> value (None: not computed)
    per_class: dict[str, list] = field(default_factory=dict)  # column name -> one value per scored class
    notes: dict[str, str] = field(default_factory=dict)  # metric name -> why it has no value


class ScoringInputs:
    """One batch as the metrics see it: uint8 label maps [B, H, W], photos [B, H, W, 3] and the
    K synthesized variants [B, K, H, W, 3], plus the networks' outputs, computed on first use.

    A per-convention metric gets the convention's label maps and segmenter readings, which
    may be larger than the images (pipeline.evaluation.conventions); both have one size."""

    def __init__(self, labels: np.ndarray, photos: np.ndarray, variants: np.ndarray, sample_ids: list[str],
                 segment: Callable[[np.ndarray], np.ndarray], features: Callable[[np.ndarray], np.ndarray] | None):
        self.labels, self.photos, self.variants, self.sample_ids = labels, photos, variants, sample_ids
        self._segment, self._features = segment, features

    def _flat_variants(self) -> np.ndarray:
        return self.variants.reshape(-1, *self.variants.shape[2:])

    @cached_property
    def predictions_real(self) -> np.ndarray:
        """The segmenter's class-index maps of the real photos, uint8 [B, h, w] (the labels' size)."""
        return self._segment(self.photos)

    @cached_property
    def predictions_synthesized(self) -> np.ndarray:
        """The segmenter's maps of every variant, uint8 [B, K, h, w]."""
        predictions = self._segment(self._flat_variants())  # at the convention's size, maybe not the images'
        return predictions.reshape(*self.variants.shape[:2], *predictions.shape[1:])

    @cached_property
    def features_real(self) -> np.ndarray:
        """Inception features of the real photos, float64 [B, D]."""
        return self._inception(self.photos)

    @cached_property
    def features_synthesized(self) -> np.ndarray:
        """Inception features of every variant, float64 [B, K, D]."""
        return self._inception(self._flat_variants()).reshape(*self.variants.shape[:2], -1)

    def _inception(self, images: np.ndarray) -> np.ndarray:
        if self._features is None:
            raise RuntimeError("a metric asked for Inception features, but the actor has no Inception weights")
        return self._features(images)


class Metric(ABC):
    """One score of the evaluation (module docstring); subclasses set `name` and the three methods.

    `per_convention`: the metric reads the segmenter's output, so it is scored once per
    convention (pipeline.evaluation.conventions), with that convention's predictions and
    labels; the others (FID, diversity) are scored once per evaluation and shared by every
    protocol.
    """

    name: str = ""
    per_convention: bool = False

    def __init__(self, settings: MetricSettings):
        self.settings = settings

    @abstractmethod
    def update(self, inputs: ScoringInputs) -> None:
        """Add a batch (in the scoring actor)."""

    @abstractmethod
    def merge(self, other: Any) -> None:
        """Add another accumulator of the same metric (on the driver)."""

    @abstractmethod
    def compute(self) -> MetricResult:
        """The metric's values over everything added."""
