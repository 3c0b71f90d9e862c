"""Fréchet Inception Distance over the evaluation, computed the way a chosen library computes it.

The backends (pytorch-fid by default, as published Cityscapes FIDs were computed; torch-fidelity;
torchmetrics) and the Inception weights file live in pipeline.evaluation.fid_backends. Nothing
is downloaded: without the file FID is not computed, and the evaluation says so in one line
instead of printing a number.

The work is split the way Ray Data runs it: `InceptionFeatures` (the backend's own network)
turns images into features inside the evaluation actors, and `FIDMetric` gathers them by sample
id and hands them to the backend's distance on the driver, so the number does not depend on how
the samples were split into batches or actors.
"""
from __future__ import annotations

import os

import numpy as np

from pipeline.evaluation.fid_backends import (DEFAULT_FID_BACKEND, FID_BACKENDS, FID_FEATURES, fid_backend,
                                              find_inception_weights)
from pipeline.evaluation.metrics.base import Metric, MetricResult, MetricSettings, ScoringInputs

# The backends' names are re-exported: the evaluation's config and planner import them from here.
__all__ = ["DEFAULT_FID_BACKEND", "FID_BACKENDS", "FID_FEATURES", "FIDMetric", "InceptionFeatures", "fid_from_features",
           "find_inception_weights"]


class InceptionFeatures:
    """uint8 RGB images [N, H, W, 3] -> float64 features [N, 2048], the backend's network."""

    def __init__(self, weights_path: str | os.PathLike, backend: str = DEFAULT_FID_BACKEND):
        self.backend = fid_backend(backend)
        self.network = self.backend.load(weights_path)

    def __call__(self, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
        return self.backend.features(self.network, images, batch_size)


def fid_from_features(real: np.ndarray, synthesized: np.ndarray, backend: str = DEFAULT_FID_BACKEND) -> float:
    """FID between two sets of features [N, D] (N >= 2 each), computed by the backend's library."""
    real, synthesized = np.asarray(real, dtype=np.float64), np.asarray(synthesized, dtype=np.float64)
    if len(real) < 2 or len(synthesized) < 2:
        raise ValueError(f"FID needs at least 2 images on each side, got {len(real)} real and {len(synthesized)} synthesized")
    return fid_backend(backend).distance(real, synthesized)


class FIDMetric(Metric):
    """FID between the real photos and all N*K synthesized images; None (with the reason) without
    Inception weights or with fewer than 2 samples. Features are kept by sample id and given to
    the backend in sample order, so the number does not depend on how batches were split."""

    name = "fid"

    def __init__(self, settings: MetricSettings):
        super().__init__(settings)
        self.real: dict[str, np.ndarray] = {}  # sample id -> features [D]
        self.synthesized: dict[str, np.ndarray] = {}  # sample id -> features [K, D]

    def update(self, inputs: ScoringInputs) -> None:
        if not self.settings.fid:
            return
        for i, sample_id in enumerate(inputs.sample_ids):
            self.real[sample_id] = inputs.features_real[i]
            self.synthesized[sample_id] = inputs.features_synthesized[i]

    def merge(self, other: "FIDMetric") -> None:
        self.real.update(other.real)
        self.synthesized.update(other.synthesized)

    def compute(self) -> MetricResult:
        if not self.settings.fid:
            return MetricResult(values={"fid": None}, notes={"fid": self.settings.fid_note})
        ids = sorted(self.real)
        real = np.stack([self.real[s] for s in ids])
        synthesized = np.concatenate([self.synthesized[s] for s in ids])
        fid = fid_from_features(real, synthesized, self.settings.fid_backend)
        return MetricResult(values={"fid": fid}, notes={"fid": ""})
