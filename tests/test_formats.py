"""Data-set formats: ADE20K and COCO-Stuff through the real preprocessing job, and a format
registered from outside the package.

    .venv/bin/python -m pytest tests/test_formats.py -q

References are computed here by hand from docs/data-formats.md#sizes-and-aspects: the centred
1:2 window (height min(H, W // 2)), then the pixel under each output pixel's centre
(floor((2i+1) S / 2T)), then the data set's id -> class index table typed out again.
Toy data: a few tiny JPEG photos of mixed sizes and aspects (pipeline.data.toy).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from store_reference import read_store_plainly

from jobs.preprocess import main
from pipeline.data.formats import FORMATS, Format, register_format
from pipeline.data.toy import LAYOUT_SIZES, generate_layout_toy, layout_paths

RESOLUTIONS = "16x32,32x64"
TOP = (32, 64)


def window_then_nearest(label: np.ndarray, height: int, width: int) -> np.ndarray:
    """The documented policy, by hand: centre 1:2 window, then nearest by pixel centres."""
    rows_in, cols_in = label.shape
    keep = min(rows_in, cols_in // 2)
    top, left = (rows_in - keep) // 2, (cols_in - 2 * keep) // 2
    window = label[top:top + keep, left:left + 2 * keep]
    rows = [(2 * i + 1) * window.shape[0] // (2 * height) for i in range(height)]
    cols = [(2 * j + 1) * window.shape[1] // (2 * width) for j in range(width)]
    return window[np.ix_(rows, cols)]


def ade_classes(ids: np.ndarray) -> np.ndarray:
    """ADE20K annotation ids -> class indices: id 1..150 is class id - 1, 0 ("other") is void, 150."""
    return np.where(ids == 0, 150, ids.astype(np.int64) - 1).astype(np.uint8)


COCO_UNUSED = {11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90}  # labels.txt's removed ids, less one


def coco_classes(ids: np.ndarray) -> np.ndarray:
    """COCO-Stuff map values -> class indices: the used ids in order, void (171) for 255 and the unused."""
    table = np.full(256, 171, dtype=np.uint8)
    used = [v for v in range(182) if v not in COCO_UNUSED]
    table[used] = np.arange(len(used))
    return table[ids]


def _preprocess(source: Path, out: Path, fmt: str, *extra: str) -> dict:
    assert main(["--source", str(source), "--out", str(out), "--format", fmt, "--resolutions", RESOLUTIONS,
                 *extra]) == 0
    return json.loads((out / "manifest.json").read_text())


def test_ade20k_every_aspect_lands_and_labels_match_the_hand_computation(tmp_path, ray_session):
    source = tmp_path / "ADEChallengeData2016"
    written = generate_layout_toy(source, "ade20k", num_train=5, num_val=2, seed=1)
    manifest = _preprocess(source, tmp_path / "store", "ade20k")

    assert manifest["rejects"] == []
    assert {name: split["count"] for name, split in manifest["splits"].items()} == {"train": 5, "val": 2}
    assert manifest["schema"]["name"] == "ade20k" and len(manifest["schema"]["classes"]) == 150
    for split in ("train", "val"):
        rows = read_store_plainly(tmp_path / "store", split, "32x64")
        assert sorted(rows) == written[split]
        for index, sample_id in enumerate(written[split]):
            _, label_path = layout_paths("ade20k", split, sample_id)
            ids = np.asarray(Image.open(source / label_path))
            assert ids.shape == LAYOUT_SIZES[index % len(LAYOUT_SIZES)]
            label, photo = rows[sample_id]
            np.testing.assert_array_equal(label, ade_classes(window_then_nearest(ids, *TOP)), err_msg=sample_id)
            assert photo.shape == (*TOP, 3)


def test_coco_stuff_unused_ids_are_void_and_a_truncated_jpeg_is_a_reject(tmp_path, ray_session):
    source = tmp_path / "cocostuff"
    written = generate_layout_toy(source, "coco-stuff", num_train=4, num_val=1, seed=2)
    # Street sign (11, dropped from COCO) and unlabeled (255) in one map: both void, no reject.
    first = written["train"][0]
    label_path = source / layout_paths("coco-stuff", "train", first)[1]
    ids = np.asarray(Image.open(label_path)).copy()
    ids[: ids.shape[0] // 2, :] = 11
    ids[ids.shape[0] // 2:, : ids.shape[1] // 3] = 255
    Image.fromarray(ids).save(label_path)
    # A photo cut short: a reject that names it, and the other samples still land.
    broken = written["train"][1]
    photo_path = source / layout_paths("coco-stuff", "train", broken)[0]
    data = photo_path.read_bytes()
    photo_path.write_bytes(data[: len(data) // 2])

    manifest = _preprocess(source, tmp_path / "store", "coco-stuff")

    assert [r["path"] for r in manifest["rejects"]] == [str(photo_path)]
    assert manifest["rejects"][0]["reason"].startswith("unreadable photo image")
    assert manifest["splits"]["train"]["count"] == 3 and manifest["splits"]["val"]["count"] == 1
    assert manifest["schema"]["name"] == "coco-stuff" and len(manifest["schema"]["classes"]) == 171
    rows = read_store_plainly(tmp_path / "store", "train", "32x64")
    assert broken not in rows
    label, _ = rows[first]
    expected = coco_classes(window_then_nearest(ids, *TOP))
    np.testing.assert_array_equal(label, expected)
    assert (label == 171).sum() > label.size // 2  # the street sign and unlabeled pixels: void
    for sample_id in written["train"][2:]:
        ids = np.asarray(Image.open(source / layout_paths("coco-stuff", "train", sample_id)[1]))
        np.testing.assert_array_equal(rows[sample_id][0], coco_classes(window_then_nearest(ids, *TOP)))


def _scan_flat(scanner, split: str, label_type: str) -> None:
    """A layout of the test's own: shots/<split>/<id>.jpg with masks/<split>/<id>.png."""
    photo_dir, label_dir = scanner.path("shots", split), scanner.path("masks", split)
    scanner.require_dir(photo_dir, split)
    scanner.require_dir(label_dir, split)
    scanner.scan_paired_split(split, label_dir, photo_dir)


@pytest.fixture
def flat_format():
    fmt = register_format(Format(name="flat-test", scan_split=_scan_flat, splits=("train",), schema="cityscapes"))
    yield fmt
    FORMATS.pop(fmt.name)


def test_a_format_registered_outside_the_package_is_a_format_flag(flat_format, tmp_path, ray_session):
    source = tmp_path / "flat"
    for folder in ("shots/train", "masks/train"):
        (source / folder).mkdir(parents=True)
    ids = np.full((32, 64), 7, np.uint8)  # road
    ids[:10] = 23  # sky
    Image.fromarray(ids).save(source / "masks" / "train" / "a.png")
    Image.fromarray(np.full((32, 64, 3), 90, np.uint8)).save(source / "shots" / "train" / "a.jpg")

    manifest = _preprocess(source, tmp_path / "store", "flat-test")

    assert manifest["source"]["format"] == "flat-test" and manifest["splits"]["train"]["count"] == 1
    label, _ = read_store_plainly(tmp_path / "store", "train", "32x64")["a"]
    np.testing.assert_array_equal(label, np.where(ids == 23, 10, 0))  # sky is class 10, road 0
    assert manifest["rejects"] == []
