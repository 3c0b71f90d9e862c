"""The model's configuration: how many classes, how wide each refinement module, how many outputs.

A CRN is fully described by three numbers-and-a-table (docs/model.md#widths): the label
channels L, one width per refinement module from 4x8 upward (the module count fixes the top
resolution), and the number K of images it outputs per label map. Everything else (kernel
sizes, normalisation, the head) is fixed by the paper.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from crn.resolution import Resolution

# The first refinement module M_0 always works at 4x8; each next module doubles both sides.
BASE_RESOLUTION = Resolution(4, 8)


@dataclass(frozen=True)
class CRNConfig:
    # Label channels L: the schema's classes including the void class (Cityscapes: 19 + 1 = 20).
    num_classes: int
    # Feature channels d_i of each refinement module, from 4x8 upward; len(widths) = n + 1
    # modules gives a top resolution of 4*2^n x 8*2^n.
    widths: tuple[int, ...]
    # K: images produced per label map (planar 3K-channel head, docs/model.md#head-with-k-outputs).
    num_outputs: int = 1

    def __post_init__(self) -> None:
        # Accept any sequence (a list from JSON) but store a tuple so the config stays hashable.
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if self.num_classes < 1:
            raise ValueError(f"CRNConfig: num_classes must be >= 1, got {self.num_classes}")
        if not self.widths or min(self.widths) < 1:
            raise ValueError(f"CRNConfig: widths must be a non-empty list of positive ints, got {self.widths}")
        if self.num_outputs < 1:
            raise ValueError(f"CRNConfig: num_outputs must be >= 1, got {self.num_outputs}")

    @property
    def resolutions(self) -> list[Resolution]:
        """The size of every module, coarse first: [4x8, 8x16, ...]."""
        h, w = BASE_RESOLUTION
        return [Resolution(h << i, w << i) for i in range(len(self.widths))]

    @property
    def top_resolution(self) -> Resolution:
        """The size of the label maps the model takes and of the images it makes."""
        return self.resolutions[-1]

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (ints and a list), for checkpoints, MLflow params and JSON."""
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CRNConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"CRNConfig: unknown fields {sorted(unknown)} (known: {sorted(known)})")
        return cls(
            num_classes=int(d["num_classes"]),
            widths=tuple(int(w) for w in d["widths"]),
            num_outputs=int(d.get("num_outputs", 1)),
        )
