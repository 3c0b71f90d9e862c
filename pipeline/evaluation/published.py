"""The field's published Cityscapes numbers, and whether an evaluation's protocol is theirs.

Every label-to-image paper since pix2pixHD reports Cityscapes the same three numbers: mIoU
and pixel accuracy of DRN-D-105's reading of the synthesized images against the label maps,
and FID against the real validation photos, all at 256x512 over the 500 validation images.
The rows below are as published (the CRN and SPADE rows from the SPADE paper, which measured
both; OASIS from its own paper). How the segmenter was shown the images was not published;
it is known from the projects' trackers (docs/evaluation.md#the-published-table):

- SPADE (and the CRN row it measured): reproduced only with the images enlarged to
  1024x2048, DRN-D-105's own input size: convention `cityscapes-upsampled`.
- OASIS: at the images' own 256x512 with nearest-downsampled labels: convention `native`.

An evaluation's numbers are printed beside a row only when its protocol is the row's: the
built-in Cityscapes schema, DRN-D-105, 256x512, the val split of 500 images, the row's
convention; FID beside FID only with pytorch-fid's Inception. Otherwise the evaluation
says what differs.
"""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.data.schema import load_schema
from pipeline.evaluation.protocol import Protocol

CITYSCAPES_VAL_IMAGES = 500
PUBLISHED_RESOLUTION = "256x512"
PUBLISHED_FID_BACKEND = "pytorch-fid"
PUBLISHED_SEGMENTER = "drn-d-105"


@dataclass(frozen=True)
class PublishedRow:
    method: str
    miou: float | None  # percent, as printed in the papers
    pixel_accuracy: float | None
    fid: float | None
    convention: str  # how the segmenter saw the images (module docstring)
    source: str


PUBLISHED_CITYSCAPES = (
    PublishedRow("CRN", 52.4, 77.1, 104.7, "cityscapes-upsampled", "SPADE paper (Park et al., CVPR 2019), Table 1"),
    PublishedRow("SPADE", 62.3, 81.9, 71.8, "cityscapes-upsampled", "SPADE paper (Park et al., CVPR 2019), Table 1"),
    PublishedRow("OASIS", 69.3, None, 47.7, "native", "OASIS paper (Sushko et al., ICLR 2021), Table 1"),
)


def differences(protocol: Protocol, row: PublishedRow) -> list[str]:
    """What keeps `protocol`'s segmentation numbers from being compared with `row`'s; [] if nothing."""
    found = []
    if protocol.schema_fingerprint != load_schema("cityscapes").fingerprint():
        found.append("the label schema is not Cityscapes' 19 classes")
    if protocol.segmenter != PUBLISHED_SEGMENTER:
        found.append(f"the segmenter is not DRN-D-105 ({protocol.segmenter})")
    if protocol.resolution != PUBLISHED_RESOLUTION:
        found.append(f"images are {protocol.resolution}, not {PUBLISHED_RESOLUTION}")
    if protocol.split != "val" or protocol.num_samples != CITYSCAPES_VAL_IMAGES:
        found.append(f"{protocol.num_samples} images of split '{protocol.split}', not the {CITYSCAPES_VAL_IMAGES} "
                     "of val")
    if protocol.convention != row.convention:
        found.append(f"convention {protocol.convention}, the row's is {row.convention}")
    return found


def fid_comparable(protocol: Protocol) -> bool:
    return protocol.fid_backend == PUBLISHED_FID_BACKEND


def comparison_lines(protocol: Protocol, values: dict[str, float | None], label: str) -> list[str]:
    """The published rows of this protocol's convention, with this evaluation's row beside them,
    or one line saying why the numbers cannot be put beside them. `label` names this evaluation's row."""
    rows = [row for row in PUBLISHED_CITYSCAPES if row.convention == protocol.convention]
    if not rows:
        return [f"    no published Cityscapes row uses convention {protocol.convention}"]
    why = differences(protocol, rows[0])
    if why:
        return [f"    not comparable with the published {', '.join(r.method for r in rows)} rows: {'; '.join(why)}"]
    fid_note = "" if fid_comparable(protocol) else f" (FID by {protocol.fid_backend or 'none'}, theirs by pytorch-fid)"
    lines = [f"    {'method':<12}{'mIoU':>7}{'acc':>7}{'FID':>8}   source"]
    for row in rows:
        lines.append(f"    {row.method:<12}{_cell(row.miou)}{_cell(row.pixel_accuracy)}{_cell(row.fid, 8)}   {row.source}")
    ours = [values.get("miou"), values.get("pixel_accuracy"), values.get("fid")]
    lines.append(f"    {label:<12}{_cell(_percent(ours[0]))}{_cell(_percent(ours[1]))}{_cell(ours[2], 8)}{fid_note}")
    return lines


def _percent(value: float | None) -> float | None:
    return None if value is None else 100 * value


def _cell(value: float | None, width: int = 7) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.1f}"
