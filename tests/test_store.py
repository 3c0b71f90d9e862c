"""The store: round trip at every resolution, plain pyarrow, the Store API, bytes read per resolution.

    .venv/bin/python -m pytest tests/test_store.py -q
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from store_reference import (
    cityscapes_files,
    column_chunk_ranges,
    expected_sample,
    read_ranges,
    read_store_plainly,
    recording_filesystem,
)

from crn.resolution import Resolution
from jobs.preprocess import main as preprocess
from pipeline.data.schema import load_schema
from pipeline.data.store import StoreError, open_store

RESOLUTIONS = ["4x8", "8x16", "16x32", "32x64", "64x128"]  # the toy_store fixture's


def test_manifest_describes_the_store(toy_store, toy_source):
    manifest = json.loads((toy_store / "manifest.json").read_text())
    assert manifest["format"] == "crn-store/1"
    assert manifest["resolutions"] == RESOLUTIONS
    assert manifest["schema"] == load_schema("cityscapes").to_dict()
    assert {name: split["count"] for name, split in manifest["splits"].items()} == {"train": 8, "val": 4}
    assert manifest["rejects"] == []
    assert manifest["source"]["fingerprint"].startswith("sha256:")
    assert manifest["source"]["format"] == "cityscapes" and manifest["source"]["label_type"] == "ids"
    assert manifest["config"]["resolutions"] == RESOLUTIONS and manifest["created_at"]
    # every listed part exists, under the run's data folder
    for split in manifest["splits"].values():
        for part in split["files"]:
            assert part["path"].startswith(manifest["data_dir"] + "/")
            assert (toy_store / part["path"]).stat().st_size == part["bytes"]


@pytest.mark.parametrize("resolution", RESOLUTIONS)
def test_round_trip_every_resolution_equals_the_source_downsampled(toy_store, toy_source, resolution):
    """What plain pyarrow reads back equals the source files, downsampled the documented way."""
    for split, count in (("train", 8), ("val", 4)):
        rows = read_store_plainly(toy_store, split, resolution)
        assert len(rows) == count
        assert list(rows) == sorted(rows)  # sorted by sample id
        for sample_id, (label, photo) in rows.items():
            want_label, want_photo = expected_sample(*cityscapes_files(toy_source, split, sample_id), resolution)
            np.testing.assert_array_equal(label, want_label, err_msg=f"{split}/{sample_id} label {resolution}")
            np.testing.assert_array_equal(photo, want_photo, err_msg=f"{split}/{sample_id} photo {resolution}")


def test_photos_are_antialiased_not_subsampled(toy_store, toy_source):
    """At 4x8 (32x smaller than the 128x256 source) each pixel is close to the area average."""
    from PIL import Image

    for sample_id, (_, photo) in read_store_plainly(toy_store, "train", "4x8").items():
        source = np.asarray(Image.open(cityscapes_files(toy_source, "train", sample_id)[1]).convert("RGB"))
        area_average = source.reshape(4, 32, 8, 32, 3).mean(axis=(1, 3))
        # bicubic with antialiasing: ~3-5 levels from the area average; plain subsampling: 25+
        assert np.abs(photo - area_average).mean() < 8


def test_class_pixel_histograms_count_the_top_resolution(toy_store):
    manifest = json.loads((toy_store / "manifest.json").read_text())
    assert manifest["class_pixels_resolution"] == "64x128"
    for split in ("train", "val"):
        labels = [label for label, _ in read_store_plainly(toy_store, split, "64x128").values()]
        expected = np.bincount(np.concatenate([l.ravel() for l in labels]), minlength=20)
        assert manifest["splits"][split]["class_pixels"] == expected.tolist()
        assert sum(expected) == len(labels) * 64 * 128


def test_store_api_matches_the_plain_reading(toy_store):
    store = open_store(toy_store)
    assert store.splits == ["train", "val"] and store.resolutions == RESOLUTIONS
    assert store.count("train") == 8 and store.count("val") == 4
    assert store.schema == load_schema("cityscapes") and store.has_photos
    table = store.read_table("val", Resolution(32, 64))
    assert table.column_names == ["sample_id", "label_32x64", "photo_32x64"]
    plain = read_store_plainly(toy_store, "val", "32x64")
    assert table.column("sample_id").to_pylist() == list(plain)
    for sample_id, label, photo in zip(*(table.column(i).to_pylist() for i in range(3))):
        np.testing.assert_array_equal(np.frombuffer(label, np.uint8).reshape(32, 64), plain[sample_id][0])
        np.testing.assert_array_equal(np.frombuffer(photo, np.uint8).reshape(32, 64, 3), plain[sample_id][1])


def test_ray_dataset_rows_are_decoded_arrays(toy_store):
    store = open_store(toy_store)
    plain = read_store_plainly(toy_store, "train", "16x32")
    dataset = store.dataset("train", "16x32").materialize()  # read once, looked at twice below
    rows = dataset.take_all()
    assert sorted(row["sample_id"] for row in rows) == sorted(plain)
    for row in rows:
        assert row["label"].dtype == np.uint8 and row["label"].shape == (16, 32)
        assert row["photo"].dtype == np.uint8 and row["photo"].shape == (16, 32, 3)
        np.testing.assert_array_equal(row["label"], plain[row["sample_id"]][0])
        np.testing.assert_array_equal(row["photo"], plain[row["sample_id"]][1])
    # the pixel columns go straight into torch
    batch = next(iter(dataset.select_columns(["label", "photo"]).iter_torch_batches(batch_size=3)))
    assert tuple(batch["label"].shape) == (3, 16, 32) and tuple(batch["photo"].shape) == (3, 16, 32, 3)


def test_store_errors_are_one_line(toy_store, tmp_path):
    with pytest.raises(StoreError, match="no store at .*manifest.json is missing") as info:
        open_store(tmp_path / "nothing-here")
    assert "\n" not in str(info.value)
    store = open_store(toy_store)
    with pytest.raises(StoreError, match="no resolution 128x256 .*it has 4x8, 8x16"):
        store.read_table("train", "128x256")
    with pytest.raises(StoreError, match="no split 'test'"):
        store.count("test")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match="unreadable manifest.json"):
        open_store(tmp_path / "broken")


@pytest.fixture(scope="module")
def wide_store(toy_source, ray_session, tmp_path_factory):
    """A store whose resolutions differ a lot in size: 4x8 (tiny), 32x64 and 128x256 (big)."""
    out = tmp_path_factory.mktemp("wide") / "store"
    assert preprocess(["--source", str(toy_source), "--out", str(out), "--resolutions", "4x8,32x64,128x256"]) == 0
    return out


def _split_reads(reads, path):
    """Separate pyarrow's speculative footer read (the file's last <= 64 KiB) from data reads."""
    size = os.path.getsize(path)
    tail = [r for r in reads if r[2] == size and r[2] - r[1] <= 64 * 1024]
    return [r for r in reads if r not in tail], tail


def _overlap(a, b) -> int:
    return max(0, min(a[1], b[1]) - max(a[0], b[0]))


@pytest.mark.parametrize("resolution", ["4x8", "32x64"])
def test_read_table_reads_only_the_resolutions_column_chunks(wide_store, tmp_path, resolution):
    log = str(tmp_path / "reads.log")
    store = open_store(wide_store)
    store_counted = open_store(str(wide_store), filesystem=recording_filesystem(log))
    table = store_counted.read_table("train", resolution)
    assert table.equals(store.read_table("train", resolution))
    (path,) = store.files("train")
    chunks = column_chunk_ranges(path)
    wanted = [chunks[c] for c in ("sample_id", f"label_{resolution}", f"photo_{resolution}")]
    data_reads, tail = _split_reads([r for r in read_ranges(log) if r[0] == path], path)
    assert len(tail) <= 1
    for _, start, end in data_reads:  # every data read lies inside a wanted column chunk
        assert any(lo <= start and end <= hi for lo, hi in wanted), (start, end, wanted)
    for lo, hi in wanted:  # and every wanted chunk was read in full
        assert sum(_overlap((s, e), (lo, hi)) for _, s, e in data_reads) == hi - lo
    file_size = os.path.getsize(path)
    read_total = sum(e - s for _, s, e in data_reads)
    assert read_total == sum(hi - lo for lo, hi in wanted) < file_size / 10


def test_ray_dataset_reads_only_the_resolutions_column_chunks(wide_store, tmp_path):
    """Through Ray Data: no read touches another resolution's column chunks, and every read
    lies between the first and the last wanted chunk."""
    log = str(tmp_path / "reads.log")
    store = open_store(str(wide_store), filesystem=recording_filesystem(log))
    assert len(store.dataset("train", "4x8").take_all()) == 8
    (path,) = open_store(wide_store).files("train")
    chunks = column_chunk_ranges(path)
    data_reads, _ = _split_reads([r for r in read_ranges(log) if r[0] == path], path)
    assert data_reads, "the dataset read no data at all"
    for name in (n for n in chunks if n.endswith(("_32x64", "_128x256"))):
        assert all(_overlap((s, e), chunks[name]) == 0 for _, s, e in data_reads), name
    wanted = [chunks[c] for c in ("sample_id", "label_4x8", "photo_4x8")]
    first, last = min(lo for lo, _ in wanted), max(hi for _, hi in wanted)
    assert all(first <= s and e <= last for _, s, e in data_reads)
