"""The evaluation protocol: what makes two evaluations' numbers comparable, hashed into an id.

Scores depend on the scoring convention (how the segmenter is shown the images,
pipeline.evaluation.conventions), the segmenter (its weights), the label schema, the
resolution, the labels compared with, the images scored (split and sample ids) and, for FID,
the backend and its Inception weights. Two evaluations are compared only when all of these
are equal, that is when their protocol ids are equal (the registry gate,
pipeline.registry.gate, never compares across ids).

    protocol = Protocol(convention="native", segmenter="torchscript", segmenter_sha256=..., schema_fingerprint=...,
                        resolution="64x128", scored_at="64x128", labels="store", scales=(1.0,), split="val",
                        sample_ids_sha256=..., num_samples=16, fid_backend=None, fid_weights_sha256=None)
    protocol.id          # 16 hex digits of the sha256 of its canonical JSON
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Iterable

PROTOCOL_FORMAT = "crn-evaluation-protocol/2"


@dataclasses.dataclass(frozen=True)
class Protocol:
    convention: str  # its name (pipeline.evaluation.conventions)
    segmenter: str  # its kind: "drn-d-105", or "torchscript" for any other file
    segmenter_sha256: str  # of the file the user has (for DRN-D-105 the published .pth)
    schema_fingerprint: str
    resolution: str  # "HxW": the size the images are made at
    scored_at: str  # "HxW": the size the segmenter's reading is compared with the labels at
    labels: str  # "store": the store's labels at scored_at; "nearest": the model's, enlarged by nearest neighbour
    scales: tuple[float, ...]  # the segmenter's input scales (1.0 alone: single-scale)
    split: str
    sample_ids_sha256: str  # of the sorted sample ids, one per line (sample_ids_digest)
    num_samples: int
    fid_backend: str | None  # None: FID not computed
    fid_weights_sha256: str | None

    def to_dict(self) -> dict:
        return {"format": PROTOCOL_FORMAT, **dataclasses.asdict(self)}

    @property
    def id(self) -> str:
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def sample_ids_digest(sample_ids: Iterable[str]) -> str:
    """sha256 of the sorted ids, one per line: the same set in any order gives the same digest."""
    return hashlib.sha256("\n".join(sorted(sample_ids)).encode()).hexdigest()

