"""Cityscapes: `leftImg8bit/<split>/<city>/<id>_leftImg8bit.png` photos with
`gtFine/<split>/<city>/<id>_gtFine_labelIds.png` (label type `ids`) or `<id>_gtFine_color.png`
(`color`) labels. Sample id: `<id>`, e.g. `aachen_000000_000019`. gtFine's other files
(instanceIds, labelTrainIds, polygons, the unused label type) are expected there and skipped.
The schema (`cityscapes`) is built in pipeline.data.schema from pipeline.data.cityscapes.
"""
from __future__ import annotations

import posixpath

import pyarrow.fs as pafs

from pipeline.data.formats import Format, register_format
from pipeline.data.sources import Scanner

PHOTO_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = {"ids": "_gtFine_labelIds.png", "color": "_gtFine_color.png"}
GTFINE_COMPANIONS = (
    "_gtFine_labelIds.png",
    "_gtFine_color.png",
    "_gtFine_instanceIds.png",
    "_gtFine_labelTrainIds.png",
    "_gtFine_polygons.json",
)


def scan_split(scanner: Scanner, split: str, label_type: str) -> None:
    photo_dir = scanner.path("leftImg8bit", split)
    label_dir = scanner.path("gtFine", split)
    for folder in (photo_dir, label_dir):
        scanner.require_dir(folder, split)
    label_suffix = LABEL_SUFFIX[label_type]
    photos: dict[str, pafs.FileInfo] = {}
    for relative, info in scanner.list_files(photo_dir).items():
        if relative.endswith(PHOTO_SUFFIX):
            photos[relative[: -len(PHOTO_SUFFIX)]] = info
        else:
            scanner.reject(info, f"not a Cityscapes photo (expected *{PHOTO_SUFFIX})")
    labels: dict[str, pafs.FileInfo] = {}
    for relative, info in scanner.list_files(label_dir).items():
        if relative.endswith(label_suffix):
            labels[relative[: -len(label_suffix)]] = info
        elif not relative.endswith(GTFINE_COMPANIONS):
            scanner.reject(info, f"not a Cityscapes label (expected *{label_suffix})")
    for key in sorted(photos.keys() | labels.keys()):
        photo, label = photos.get(key), labels.get(key)
        if label is None:
            scanner.reject(photo, scanner.missing("photo", "label", posixpath.join(label_dir, key + label_suffix)))
        elif photo is None:
            scanner.reject(label, scanner.missing("label", "photo", posixpath.join(photo_dir, key + PHOTO_SUFFIX)))
        else:
            scanner.add(split, posixpath.basename(key), label, photo)


FORMAT = register_format(Format(
    name="cityscapes",
    scan_split=scan_split,
    label_type="ids",
    label_types=("ids", "color"),  # the file name says which: no per-file guess
    summary="leftImg8bit/<split>/<city>/*_leftImg8bit.png + gtFine/<split>/<city>/*_gtFine_labelIds.png",
))
