"""Image sizes as the project writes them: "64x128" = height 64, width 128.

Every size the CRN takes is h x 2h with h = 4 * 2^n (4x8, 8x16, ..., 1024x2048): the sizes
of its refinement modules (docs/model.md#refinement-modules). `Resolution` is a (height, width) tuple
that prints as "HxW"; text is parsed into one once, where it enters (a flag, a manifest).
"""
from __future__ import annotations

from typing import NamedTuple


class Resolution(NamedTuple):
    height: int
    width: int

    def __str__(self) -> str:
        return f"{self.height}x{self.width}"

    @property
    def is_crn_size(self) -> bool:
        """h x 2h with h = 4 * 2^n."""
        h = self.height
        return h >= 4 and (h & (h - 1)) == 0 and self.width == 2 * h

    def checked(self) -> "Resolution":
        """This size, or a one-line ValueError if the CRN cannot take it."""
        if not self.is_crn_size:
            raise ValueError(f"resolution {self} is not h x 2h with h = 4 * 2^n (4x8, 8x16, ..., 256x512, ...)")
        return self

    @classmethod
    def parse(cls, text: str, crn_size: bool = True) -> "Resolution":
        """"64x128" -> Resolution(64, 128), checked to be a size the CRN takes unless `crn_size`
        is False (an image size elsewhere); one-line ValueError otherwise."""
        parts = str(text).strip().lower().split("x")
        if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"resolution '{text}' is not written HxW, e.g. 64x128")
        size = cls(int(parts[0]), int(parts[1]))
        return size.checked() if crn_size else size


def parse_resolutions(text: str) -> tuple[Resolution, ...]:
    """"32x64,64x128" -> (Resolution(32, 64), Resolution(64, 128)): distinct, smallest first."""
    items = [t for t in str(text).split(",") if t.strip()]
    if not items:
        raise ValueError("no resolutions given; write them as e.g. 32x64,64x128")
    return tuple(sorted({Resolution.parse(t) for t in items}))
