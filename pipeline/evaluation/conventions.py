"""Scoring conventions: how the segmenter is shown the images, named so that numbers say how they were made.

Papers that report segmentation scores of synthesized images agree on the segmenter and
disagree on how it sees them, and the numbers move by several points with it:

- `native`: the segmenter sees the images at the size they were made (Cityscapes: 256x512),
  and its reading is compared with the label maps at that size (nearest-downsampled from the
  annotations by preprocessing). OASIS and CLADE score this way.
- `cityscapes-upsampled`: the images (synthesized and real alike) are enlarged bilinearly to
  1024x2048, the size of Cityscapes' annotations and of the images DRN-D-105 was trained on,
  and the reading is compared with the label maps at 1024x2048: the store's own, when it
  holds that resolution (the annotations as published), else the model's label maps enlarged
  by nearest neighbour (the protocol records which). SPADE's published numbers reproduce only
  this way.
- `native-ms`: `native` with DRN's multi-scale test: the segmenter also sees the image at
  0.5, 0.75, 1.25, 1.5 and 1.75 times its size (bicubic, as DRN's loader), each output's
  log-probabilities are resized bilinearly to the image's size and summed, then the argmax.

A convention is part of the evaluation protocol (pipeline.evaluation.protocol): each has its
own protocol id, and one evaluation job scores several over the same synthesized images.
`register_convention` adds one (a plug-in, like a metric or a generator).
"""
from __future__ import annotations

from dataclasses import dataclass

from crn.resolution import Resolution

DRN_TEST_SCALES = (0.5, 0.75, 1.25, 1.5, 1.75)  # fyu/drn segment.py --ms, besides the image itself
CITYSCAPES_ANNOTATION_SIZE = "1024x2048"


@dataclass(frozen=True)
class Convention:
    name: str
    description: str  # one line, for --help and the docs
    segment_at: str | None = None  # "HxW" the images are enlarged to before the segmenter; None: as made
    extra_scales: tuple[float, ...] = ()  # multi-scale test: further input scales, log-probabilities summed

    def scoring_size(self, resolution: str) -> str:
        """The size the segmenter's reading is compared with the labels at, for images of `resolution`."""
        if self.segment_at is None:
            return resolution
        made, shown = Resolution.parse(resolution), Resolution.parse(self.segment_at, crn_size=False)
        if made.height * shown.width != made.width * shown.height:
            raise ValueError(f"convention '{self.name}' shows the segmenter {self.segment_at} images; "
                             f"{resolution} images have another aspect ratio")
        return str(shown)


CONVENTIONS: dict[str, Convention] = {}


def register_convention(convention: Convention) -> Convention:
    CONVENTIONS[convention.name] = convention
    return convention


register_convention(Convention("native", "the segmenter sees the images at the size they were made"))
register_convention(Convention(
    "cityscapes-upsampled",
    f"images enlarged bilinearly to {CITYSCAPES_ANNOTATION_SIZE} (Cityscapes' annotation size) before the segmenter",
    segment_at=CITYSCAPES_ANNOTATION_SIZE))
register_convention(Convention("native-ms", "native, plus DRN's multi-scale test (scales 0.5 to 1.75, summed)",
                               extra_scales=DRN_TEST_SCALES))

DEFAULT_CONVENTION = "native"


def convention(name: str) -> Convention:
    try:
        return CONVENTIONS[name]
    except KeyError:
        raise ValueError(f"unknown protocol '{name}' (choose from {', '.join(CONVENTIONS)})") from None
