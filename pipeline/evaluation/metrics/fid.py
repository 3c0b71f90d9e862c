"""Fréchet Inception Distance through torchmetrics, with Inception weights from a local file.

    FID = |mu_r - mu_s|^2 + Tr(S_r + S_s - 2 (S_r S_s)^(1/2))

over the 2048 pool features of the Inception network of the FID paper (torch-fidelity's port,
`pt_inception-2015-12-05-6726825d.pth`), which torchmetrics' `FrechetInceptionDistance`
uses. Nothing is downloaded: the weights come from a file, by default where torch-fidelity
would have cached it (`<torch hub dir>/checkpoints/`); without the file FID is not
computed, and the evaluation says so in one line instead of printing a number.

The work is split the way Ray Data runs it: `InceptionFeatures` (torchmetrics' own extractor,
`FrechetInceptionDistance(...).inception`) turns images into features inside the evaluation
actors, and `fid_from_features` feeds the gathered features to a `FrechetInceptionDistance`
whose feature extractor passes them through, so that torchmetrics computes the means,
covariances and the distance itself.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from pipeline.evaluation.metrics.base import Metric, MetricResult, MetricSettings, ScoringInputs
from pipeline.options import AUTO

FID_FEATURES = 2048  # the pool3 features of the FID paper
INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"  # torch-fidelity's name for the weights


def default_inception_path() -> Path:
    """Where torch-fidelity (through torch.hub) keeps the FID Inception weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def find_inception_weights(requested: str) -> tuple[Path | None, str]:
    """(weights file or None, reason when None) for `--fid-weights auto|none|<file>`.

    A named file that does not exist is the user's mistake (ValueError); a missing file
    under `auto` only means no FID.
    """
    if requested == "none":
        return None, "FID not computed: --fid-weights none"
    if requested == AUTO:
        path = default_inception_path()
        if path.is_file():
            return path, ""
        return None, (f"FID not computed: no Inception weights at {path} (torch-fidelity's {INCEPTION_FILE}; "
                      "put the file there or pass --fid-weights FILE; nothing is downloaded)")
    path = Path(requested).expanduser()
    if not path.is_file():
        raise ValueError(f"no such file {requested}")
    return path.resolve(), ""


class InceptionFeatures:
    """uint8 RGB images [N, H, W, 3] -> float64 features [N, 2048], torchmetrics' extractor."""

    def __init__(self, weights_path: str | os.PathLike):
        from torchmetrics.image.fid import FrechetInceptionDistance

        self.network = FrechetInceptionDistance(feature=FID_FEATURES, feature_extractor_weights_path=str(weights_path)).inception

    @torch.no_grad()
    def __call__(self, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
        images = np.asarray(images, dtype=np.uint8)
        features = [self.network(torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])).permute(0, 3, 1, 2))
                    for i in range(0, len(images), batch_size)]
        return torch.cat(features).double().numpy() if features else np.zeros((0, FID_FEATURES))


class _GivenFeatures(torch.nn.Module):
    """The "feature extractor" of a FrechetInceptionDistance fed with features already computed."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def fid_from_features(real: np.ndarray, synthesized: np.ndarray) -> float:
    """FID between two sets of features [N, D] (N >= 2 each), computed by torchmetrics."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, synthesized = np.asarray(real, dtype=np.float64), np.asarray(synthesized, dtype=np.float64)
    if len(real) < 2 or len(synthesized) < 2:
        raise ValueError(f"FID needs at least 2 images on each side, got {len(real)} real and {len(synthesized)} synthesized")
    metric = FrechetInceptionDistance(feature=_GivenFeatures(real.shape[1]))  # its sums are float64
    metric.update(torch.from_numpy(real), real=True)
    metric.update(torch.from_numpy(synthesized), real=False)
    return float(metric.compute())


class FIDMetric(Metric):
    """FID between the real photos and all N*K synthesized images; None (with the reason) without
    Inception weights or with fewer than 2 samples. Features are kept by sample id and fed to
    torchmetrics in sample order, so the number does not depend on how batches were split."""

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
        return MetricResult(values={"fid": fid_from_features(real, synthesized)}, notes={"fid": ""})
