"""The preprocessing job: dry run, reruns, determinism, label types, layouts, interrupted writes.

    .venv/bin/python -m pytest tests/test_preprocess.py -q
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image
from store_reference import read_store_plainly

from jobs.preprocess import main
from pipeline.data.store import StoreError, open_store
from pipeline.runtime import entrypoint

run = entrypoint(main)  # what the command line runs: user errors become exit code 2

RESOLUTIONS = "4x8,8x16,16x32,32x64,64x128"  # the toy_store fixture's
SAME_AS_TOY_STORE = ["--resolutions", RESOLUTIONS]


def _manifest(store: Path) -> dict:
    return json.loads((store / "manifest.json").read_text())


def _without_run_details(manifest: dict) -> dict:
    """A manifest less what names this particular run: when, and the --out it was given."""
    manifest = json.loads(json.dumps(manifest))
    del manifest["created_at"]
    del manifest["config"]["out"]
    return manifest


def _parts(store: Path) -> dict[str, bytes]:
    manifest = _manifest(store)
    return {f["path"]: (store / f["path"]).read_bytes() for split in manifest["splits"].values() for f in split["files"]}


def _same_rows(store_a: Path, store_b: Path, splits=("train", "val"), photos=True) -> None:
    for split in splits:
        for resolution in RESOLUTIONS.split(","):
            a, b = read_store_plainly(store_a, split, resolution), read_store_plainly(store_b, split, resolution)
            assert list(a) == list(b), (split, resolution)
            for sample_id in a:
                np.testing.assert_array_equal(a[sample_id][0], b[sample_id][0])
                if photos:
                    np.testing.assert_array_equal(a[sample_id][1], b[sample_id][1])


def test_dry_run_prints_the_resolved_config_and_touches_nothing(tmp_path, capsys):
    out = tmp_path / "store"
    assert main(["--source", str(tmp_path), "--out", str(out), "--format", "gta5", "--dry-run"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["label_type"] == "color"  # gta5's usual label type, resolved
    assert config["resolutions"] == ["64x128", "128x256", "256x512"]
    assert config["rows_per_file"] == 32 * 2**20 // ((64 * 128 + 128 * 256 + 256 * 512) * 4)
    assert not out.exists()


def test_rerun_is_a_no_op_and_a_fresh_run_writes_the_same_store(toy_source, toy_store, tmp_path, capsys, ray_session):
    copy = tmp_path / "copy"
    shutil.copytree(toy_store, copy)
    before = (copy / "manifest.json").read_bytes()
    assert main(["--source", str(toy_source), "--out", str(copy), *SAME_AS_TOY_STORE]) == 0
    assert "is up to date" in capsys.readouterr().out
    assert (copy / "manifest.json").read_bytes() == before

    fresh = tmp_path / "fresh"
    assert main(["--source", str(toy_source), "--out", str(fresh), *SAME_AS_TOY_STORE]) == 0
    assert _parts(fresh) == _parts(toy_store)  # byte for byte
    assert _without_run_details(_manifest(fresh)) == _without_run_details(_manifest(toy_store))


def test_part_size_changes_files_not_rows_and_colour_labels_equal_label_ids(toy_source, toy_store, tmp_path, ray_session):
    out = tmp_path / "store"
    args = ["--source", str(toy_source), "--out", str(out), *SAME_AS_TOY_STORE, "--rows-per-file", "3"]
    assert main([*args, "--label-type", "color"]) == 0
    manifest = _manifest(out)
    assert [len(manifest["splits"][s]["files"]) for s in ("train", "val")] == [3, 2]  # 8 = 3+3+2, 4 = 3+1
    _same_rows(out, toy_store)
    assert manifest["splits"]["train"]["class_pixels"] == _manifest(toy_store)["splits"]["train"]["class_pixels"]


def test_only_the_requested_splits(toy_source, tmp_path, ray_session):
    out = tmp_path / "store"
    assert main(["--source", str(toy_source), "--out", str(out), "--resolutions", "8x16", "--splits", "val"]) == 0
    assert open_store(out).splits == ["val"] and open_store(out).count("val") == 4


def _flat_copy(toy_source: Path, root: Path, pad: int, colour_labels: bool, photos: bool = True) -> None:
    """The toy train scenes as images/ + labels/ (GTA5 / paired layout), `pad` rows added above
    and below (so not 1:2 when pad > 0)."""
    (root / "labels").mkdir(parents=True)
    if photos:
        (root / "images").mkdir()
    suffix = "_gtFine_color.png" if colour_labels else "_gtFine_labelIds.png"
    for label_path in sorted((toy_source / "gtFine" / "train").rglob(f"*{suffix}")):
        name = label_path.name[: -len(suffix)]
        label = np.asarray(Image.open(label_path))
        padding = [(pad, pad), (0, 0)] + ([(0, 0)] if label.ndim == 3 else [])
        Image.fromarray(np.pad(label, padding, mode="edge")).save(root / "labels" / f"{name}.png")
        if photos:
            photo_path = next((toy_source / "leftImg8bit" / "train").rglob(f"{name}_leftImg8bit.png"))
            photo = np.asarray(Image.open(photo_path))
            Image.fromarray(np.pad(photo, [(pad, pad), (0, 0), (0, 0)], mode="edge")).save(root / "images" / f"{name}.png")


def test_gta5_layout_with_a_centre_crop_to_1_by_2(toy_source, toy_store, tmp_path, ray_session):
    """128x256 scenes padded to 140x256: the centre crop must give back exactly the toy store."""
    source = tmp_path / "gta5"
    _flat_copy(toy_source, source, pad=6, colour_labels=True)
    out = tmp_path / "store"
    assert main(["--source", str(source), "--format", "gta5", "--crop-to-aspect", "--out", str(out),
                 *SAME_AS_TOY_STORE]) == 0
    assert open_store(out).splits == ["train"]
    _same_rows(out, toy_store, splits=("train",))


def test_label_only_folder_stores_labels_without_photos(toy_source, toy_store, tmp_path, ray_session):
    source = tmp_path / "labels-only"
    _flat_copy(toy_source, source, pad=0, colour_labels=False, photos=False)
    out = tmp_path / "store"
    assert main(["--source", str(source), "--format", "labels-only", "--out", str(out), *SAME_AS_TOY_STORE]) == 0
    store = open_store(out)
    assert not store.has_photos and store.count("train") == 8
    assert store.read_table("train", "32x64").column_names == ["sample_id", "label_32x64"]
    plain = read_store_plainly(out, "train", "32x64")
    assert all(photo is None for _, photo in plain.values())  # the photo columns hold nulls
    _same_rows(out, toy_store, splits=("train",), photos=False)
    row = store.dataset("train", "32x64").take(1)[0]
    assert set(row) == {"sample_id", "label"}


def test_rerun_after_a_write_failed_midway_finishes_the_store(toy_source, toy_store, tmp_path, capsys, ray_session):
    """A part that cannot be written stops the job (one line) with no manifest written;
    readers still see the old store; the same command then finishes the job, reusing what
    was finished, and the store equals an uninterrupted run's."""
    out = tmp_path / "store"
    # An older store already at the destination (other sources: the val split only).
    assert main(["--source", str(toy_source), "--out", str(out), *SAME_AS_TOY_STORE, "--splits", "val"]) == 0
    old_manifest = (out / "manifest.json").read_bytes()
    # Block one part of the new run: a folder where its file must go.
    data_dir = out / _manifest(toy_store)["data_dir"]  # same sources and settings: same data folder
    blocker = data_dir / "train" / "part-00000.parquet"
    blocker.mkdir(parents=True)
    args = ["--source", str(toy_source), "--out", str(out), *SAME_AS_TOY_STORE]
    assert run(args) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: cannot write") and "part-00000.parquet" in error
    assert (out / "manifest.json").read_bytes() == old_manifest  # the old store, untouched
    old = open_store(out)
    assert old.splits == ["val"] and old.read_table("val", "4x8").num_rows == 4
    finished = {p: p.stat().st_ino for p in data_dir.rglob("*.parquet") if p.is_file()}

    blocker.rmdir()
    assert main(args) == 0
    assert f"{2 - len(finished)} written, {len(finished)} reused" in capsys.readouterr().out
    assert all(p.stat().st_ino == inode for p, inode in finished.items())  # reused, not rewritten
    assert _parts(out) == _parts(toy_store)
    assert _without_run_details(_manifest(out)) == _without_run_details(_manifest(toy_store))


def test_rerun_over_broken_leftovers_rewrites_them(toy_source, toy_store, tmp_path, capsys, ray_session):
    """Leftovers of a crash on a filesystem without atomic rename: a cut-short part, a good
    part and a temporary file, no manifest. The rerun keeps the good part, rebuilds the
    broken one and removes the temporary file."""
    out = tmp_path / "store"
    shutil.copytree(toy_store, out)
    (out / "manifest.json").unlink()
    with pytest.raises(StoreError, match="no store at"):
        open_store(out)
    data_dir = out / _manifest(toy_store)["data_dir"]
    broken = data_dir / "train" / "part-00000.parquet"
    broken.write_bytes(broken.read_bytes()[:1000])
    good = data_dir / "val" / "part-00000.parquet"
    inode = good.stat().st_ino
    (data_dir / "train" / ".part-00001.parquet.tmp-123").write_bytes(b"half a part")

    assert main(["--source", str(toy_source), "--out", str(out), *SAME_AS_TOY_STORE]) == 0
    assert "1 written, 1 reused" in capsys.readouterr().out
    assert good.stat().st_ino == inode
    assert _parts(out) == _parts(toy_store)
    assert sorted(p.name for p in (data_dir / "train").iterdir()) == ["part-00000.parquet"]


def test_preprocessing_is_one_mlflow_run(toy_source, tmp_path, ray_session):
    """Every job is one MLflow run: the config, the counts, the manifest, the store's key."""
    out = tmp_path / "store"
    assert main(["--source", str(toy_source), "--out", str(out), *SAME_AS_TOY_STORE, "--experiment", "test-prep"]) == 0
    (record,) = mlflow.search_runs(experiment_names=["test-prep"], output_format="list")
    manifest = json.loads((out / "manifest.json").read_text())
    assert record.data.params["source"] == str(toy_source)
    assert record.data.params["resolutions"] == str(RESOLUTIONS.split(","))
    assert record.data.metrics["samples_train"] == 8 and record.data.metrics["samples_val"] == 4
    assert record.data.metrics["rejects"] == 0
    assert record.data.tags["crn.store_key"] == manifest["key"] and record.data.tags["crn.store"] == str(out)
    logged = mlflow.artifacts.load_dict(f"runs:/{record.info.run_id}/manifest.json")
    assert logged == manifest
