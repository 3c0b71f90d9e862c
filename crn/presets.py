"""Named model presets: the paper's three models and small ones of the same shape for CPUs.

The paper's widths come from one table (docs/model.md#widths); a preset takes the first
n + 1 rows of it. The CPU presets keep the architecture and the table's shape (wide at the
coarse levels, narrower towards the top) but divide every width by a constant so that a
training step takes well under a second (crn-tiny: tests, and the demo with K=2), about a
second (crn-small, a larger demo) or a few seconds (crn-mid, the training-step benchmark) on
a 2-core machine.

Usage: `make_config("crn-256p", num_classes=20)`, or `PRESETS[name](num_classes, num_outputs)`.
"""
from __future__ import annotations

from typing import Callable

from crn.config import CRNConfig

# d_i of modules M_0 (4x8) .. M_8 (1024x2048), read off the authors' checkpoints.
PAPER_WIDTHS: tuple[int, ...] = (1024, 1024, 1024, 1024, 1024, 512, 512, 128, 32)

# K for the CPU presets: more than one output so the diversity loss is at work, few
# enough that the K VGG passes per step stay affordable on a CPU.
CPU_NUM_OUTPUTS = 4


def preset(num_modules: int, width_divisor: int, default_outputs: int,
            widths: tuple[int, ...] | None = None) -> Callable[..., CRNConfig]:
    widths = widths or tuple(w // width_divisor for w in PAPER_WIDTHS[:num_modules])

    def build(num_classes: int, num_outputs: int | None = None) -> CRNConfig:
        k = default_outputs if num_outputs is None else num_outputs
        return CRNConfig(num_classes=num_classes, widths=widths, num_outputs=k)

    return build


PRESETS: dict[str, Callable[..., CRNConfig]] = {
    # The published models (docs/model.md#presets): top 256x512 with K=9, 512x1024 and 1024x2048 with K=1.
    "crn-256p": preset(num_modules=7, width_divisor=1, default_outputs=9),
    "crn-512p": preset(num_modules=8, width_divisor=1, default_outputs=1),
    "crn-1024p": preset(num_modules=9, width_divisor=1, default_outputs=1),
    # CPU presets: top 32x64 widths 64; top 64x128 widths 128; top 128x256 widths 256/128.
    "crn-tiny": preset(num_modules=4, width_divisor=16, default_outputs=CPU_NUM_OUTPUTS),
    "crn-small": preset(num_modules=5, width_divisor=8, default_outputs=CPU_NUM_OUTPUTS),
    "crn-mid": preset(num_modules=6, width_divisor=4, default_outputs=CPU_NUM_OUTPUTS),
}


def make_config(name: str, num_classes: int, num_outputs: int | None = None) -> CRNConfig:
    """The named preset for a label schema of `num_classes` channels (void included).

    `num_outputs` overrides the preset's K (for example K=1 to train a CPU preset plainly).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name](num_classes, num_outputs)
