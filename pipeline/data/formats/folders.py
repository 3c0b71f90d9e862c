"""The plain folder layouts: `gta5` and `paired` (`images/` + `labels/`) and `labels-only`.

- `gta5` and `paired`: `images/` and `labels/` with matching relative paths less the
  extension (`images/00001.png` with `labels/00001.png`), either at the root (one split) or
  under `<split>/images`, `<split>/labels`. Photos may be PNG or JPEG, labels are PNG.
  Sample id: the relative path less the extension. GTA5 labels are colour-coded.
- `labels-only`: label PNGs only (for synthesis), under `<split>/labels/`, else `labels/`,
  else the root itself.
Without --splits the splits are the `<split>/` folders that hold a `labels/` folder; with
none, the root holds one split, named `train` (or the one --splits value).
"""
from __future__ import annotations

import posixpath

import pyarrow.fs as pafs

from pipeline.data.formats import Format, register_format
from pipeline.data.sources import Scanner, SourceError


def _find_splits(name: str, with_photos: bool):
    def find_splits(scanner: Scanner, splits: list[str] | None) -> list[str]:
        names = splits or sorted(
            info.base_name
            for info in scanner.fs.get_file_info(pafs.FileSelector(scanner.root))
            if info.type == pafs.FileType.Directory and not info.base_name.startswith(".")
        )
        found = [split for split in names if scanner.is_dir(scanner.path(split, "labels"))]
        if found:
            missing = [s for s in (splits or []) if s not in found]
            if missing:
                raise SourceError(f"source {scanner.uri}: split '{missing[0]}' not found (no {missing[0]}/labels)")
            return found
        if splits and len(splits) > 1:
            raise SourceError(
                f"source {scanner.uri}: has no <split>/labels folders, so it holds one split; "
                "name it with one --splits value"
            )
        if with_photos and not scanner.is_dir(scanner.path("labels")):
            raise SourceError(f"source {scanner.uri}: no labels/ folder (layout '{name}' needs images/ and labels/)")
        return [splits[0] if splits else "train"]
    return find_splits


def _folders(scanner: Scanner, split: str, with_photos: bool) -> tuple[str, str | None]:
    """(label folder, photo folder or None) of a split: its own folder, else the root's."""
    base = scanner.path(split) if scanner.is_dir(scanner.path(split, "labels")) else scanner.root
    label_dir = posixpath.join(base, "labels")
    if not with_photos:
        return (label_dir if scanner.is_dir(label_dir) else scanner.root), None  # else: PNGs at the root itself
    return label_dir, posixpath.join(base, "images")


def scan_pairs(scanner: Scanner, split: str, label_type: str) -> None:
    label_dir, photo_dir = _folders(scanner, split, with_photos=True)
    scanner.scan_paired_split(split, label_dir, photo_dir)


def scan_labels(scanner: Scanner, split: str, label_type: str) -> None:
    label_dir, _ = _folders(scanner, split, with_photos=False)
    scanner.scan_paired_split(split, label_dir, None)


register_format(Format(name="gta5", scan_split=scan_pairs, label_type="color", find_splits=_find_splits("gta5", True),
                       summary="images/ + labels/ (colour-coded, Cityscapes palette), optionally under <split>/"))
register_format(Format(name="paired", scan_split=scan_pairs, label_type="ids", find_splits=_find_splits("paired", True),
                       summary="images/ + labels/ with matching names, optionally under <split>/"))
register_format(Format(name="labels-only", scan_split=scan_labels, label_type="ids", has_photos=False,
                       find_splits=_find_splits("labels-only", False),
                       summary="label PNGs alone (for synthesis): <split>/labels/, labels/ or the root"))
