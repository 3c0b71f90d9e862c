"""Diversity of the K variants of a label map: do they differ, class by class?

The diversity loss asks the K images of a map to differ class by class (docs/model.md). The
score: for each class c present in the map, the mean over the K(K-1)/2 pairs of variants of
their mean absolute difference inside c's region, in RGB on the 0..1 scale (L1 per pixel and
channel). Averaged over the samples where c occurs, then over classes. 0 for K = 1 or
identical variants, 1 for black against white everywhere.
"""
from __future__ import annotations

import itertools

import numpy as np

from pipeline.evaluation.metrics.base import Metric, MetricResult, MetricSettings, ScoringInputs


def class_diversity(label: np.ndarray, variants: np.ndarray, num_scored_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One sample's per-class diversity: (value [C] float64, present [C] bool).

    `label` uint8 [H, W]; `variants` uint8 [K, H, W, 3]. value[c] is the mean over pairs of
    variants of their mean absolute RGB difference (0..1) over c's pixels; 0 where c is
    absent (present[c] False) and for K = 1. Void (index >= num_scored_classes) is left out.
    """
    label = np.asarray(label)
    pixels = np.bincount(label.ravel(), minlength=num_scored_classes + 1)[:num_scored_classes]
    present = pixels > 0
    value = np.zeros(num_scored_classes, dtype=np.float64)
    pairs = list(itertools.combinations(range(len(variants)), 2))
    if not pairs:
        return value, present
    images = np.asarray(variants, dtype=np.float32) / 255.0
    for i, j in pairs:
        distance = np.abs(images[i] - images[j]).mean(axis=-1)  # [H, W]
        value += np.bincount(label.ravel(), weights=distance.ravel(), minlength=num_scored_classes + 1)[:num_scored_classes]
    value[present] /= pixels[present] * len(pairs)
    return value, present


def diversity_score(value_sums: np.ndarray, sample_counts: np.ndarray) -> tuple[float, list[float | None]]:
    """(mean over classes, per-class mean) from per-class sums of `class_diversity` values and
    the number of samples each class occurs in."""
    per_class = [float(s / n) if n > 0 else None for s, n in zip(value_sums, sample_counts)]
    counted = [v for v in per_class if v is not None]
    return (float(np.mean(counted)) if counted else 0.0), per_class


class DiversityMetric(Metric):
    """The mean per-class diversity of the K variants, and each class's."""

    name = "diversity"

    def __init__(self, settings: MetricSettings):
        super().__init__(settings)
        self.num_scored_classes = settings.num_scored_classes
        self.value_sums = np.zeros(settings.num_scored_classes, dtype=np.float64)
        self.sample_counts = np.zeros(settings.num_scored_classes, dtype=np.int64)

    def update(self, inputs: ScoringInputs) -> None:
        for label, variants in zip(inputs.labels, inputs.variants):
            value, present = class_diversity(label, variants, self.num_scored_classes)
            self.value_sums += value
            self.sample_counts += present

    def merge(self, other: "DiversityMetric") -> None:
        self.value_sums += other.value_sums
        self.sample_counts += other.sample_counts

    def compute(self) -> MetricResult:
        mean, per_class = diversity_score(self.value_sums, self.sample_counts)
        return MetricResult(values={"diversity": mean}, per_class={"diversity": per_class})
