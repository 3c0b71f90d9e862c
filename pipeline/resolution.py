"""Resolutions as the project writes them: "64x128" = height 64, width 128.

Every size is h x 2h with h = 4 * 2^n (4x8, 8x16, ..., 1024x2048), the sizes of the CRN's
refinement modules (crn-spec.md section 1, docs/contracts.md).
"""
from __future__ import annotations

Resolution = tuple[int, int]


def format_resolution(resolution: Resolution) -> str:
    height, width = resolution
    return f"{height}x{width}"


def check_resolution(resolution: Resolution) -> Resolution:
    """Return `resolution` if it is a CRN size, else raise ValueError (one line)."""
    height, width = resolution
    power_of_two_times_four = height >= 4 and height % 4 == 0 and ((height // 4) & (height // 4 - 1)) == 0
    if not power_of_two_times_four or width != 2 * height:
        raise ValueError(
            f"resolution {height}x{width} is not h x 2h with h = 4 * 2^n (4x8, 8x16, ..., 256x512, ...)"
        )
    return resolution


def parse_resolution(text: str) -> Resolution:
    """"64x128" -> (64, 128), checked."""
    parts = text.strip().lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"resolution '{text}' is not written HxW, e.g. 64x128")
    return check_resolution((int(parts[0]), int(parts[1])))


def parse_resolutions(text: str) -> list[Resolution]:
    """"32x64,64x128" -> [(32, 64), (64, 128)]: distinct, smallest first."""
    items = [t for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError("no resolutions given; write them as e.g. 32x64,64x128")
    return sorted({parse_resolution(t) for t in items})
