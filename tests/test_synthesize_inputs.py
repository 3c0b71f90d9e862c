"""Batch synthesis from a folder of label maps alone: bad files become rejects, a wrong schema an error.

    .venv/bin/python -m pytest tests/test_synthesize_inputs.py -q

References: Cityscapes label ids mapped to train ids by the official table and resized by
nearest neighbour, both written out here by hand, then the model called directly
(tests/synth_models.py). Real local Ray and MLflow.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from synth_models import TEST_NUM_OUTPUTS, make_test_checkpoint, reference_images

from jobs.synthesize import main
from pipeline.data.cityscapes import LABELS
from pipeline.data.schema import SchemaMismatch, load_schema
from pipeline.errors import UserError
from pipeline.runtime import entrypoint
from pipeline.synthesis.config import parse_synthesize_config as config_from_argv
from pipeline.synthesis.job import run

HEIGHT, WIDTH = 32, 64  # crn-tiny's top resolution


def train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Cityscapes label ids -> class indices: the train id, or 19 (void) for the rest."""
    table = np.full(256, 255, dtype=np.uint8)
    for label in LABELS:
        if label.id >= 0:
            table[label.id] = label.train_id if 0 <= label.train_id < 19 else 19
    return table[label_ids]


def nearest(classes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest neighbour by pixel centres: output (i, j) takes source (floor((2i+1)H/2h), ...)."""
    rows = [(2 * i + 1) * classes.shape[0] // (2 * height) for i in range(height)]
    cols = [(2 * j + 1) * classes.shape[1] // (2 * width) for j in range(width)]
    return classes[np.ix_(rows, cols)]


@pytest.fixture(scope="module")
def label_folder(tmp_path_factory):
    """Good label maps (64x128 and 32x64 Cityscapes ids) and one of each kind of bad file."""
    folder = tmp_path_factory.mktemp("label-maps")
    rng = np.random.default_rng(3)
    known_ids = np.array([label.id for label in LABELS if label.id >= 0], dtype=np.uint8)
    good = {}
    sizes = {"street_a": (64, 128), "street_b": (64, 128), "street_c": (64, 128), "small_exact": (32, 64),
             "256/00100027": (64, 128)}  # the last in a nested folder: its sample id keeps the "/"
    for name, (h, w) in sizes.items():
        ids = known_ids[rng.integers(0, len(known_ids), size=(h // 8, w // 8))].repeat(8, 0).repeat(8, 1)
        ids[rng.random((h, w)) < 0.1] = 26  # speckles of car, so nearest neighbour has detail to pick
        (folder / f"{name}.png").parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(ids).save(folder / f"{name}.png")
        good[name] = nearest(train_ids(ids), HEIGHT, WIDTH)
    good_png = (folder / "street_a.png").read_bytes()
    (folder / "truncated.png").write_bytes(good_png[: len(good_png) // 2])
    Image.fromarray(np.full((32, 80), 7, np.uint8)).save(folder / "wide.png")
    Image.fromarray(np.full((16, 32), 7, np.uint8)).save(folder / "tiny.png")
    outside = np.full((32, 64), 7, np.uint8)
    outside[5, 5] = 250
    Image.fromarray(outside).save(folder / "outside.png")
    (folder / "notes.txt").write_text("not a label map")
    bad = {
        "truncated.png": "unreadable label image",
        "wide.png": "wrong aspect ratio: 32x80",
        "tiny.png": "too small: 16x32",
        "outside.png": "label ids outside schema 'cityscapes': 250 (1 pixels)",
        "notes.txt": "not a label image file",
    }
    return folder, good, bad


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_test_checkpoint(tmp_path_factory.mktemp("inputs-model") / "model.pt", seed=4)


def test_label_folder_bad_files_are_rejected_the_rest_synthesized(label_folder, checkpoint, tmp_path, ray_session, capsys):
    folder, good, bad = label_folder
    output = tmp_path / "out"
    outcome = run(config_from_argv(["--model", str(checkpoint), "--labels", str(folder), "--output", str(output)]))

    rejects = json.loads((output / "rejects.json").read_text())
    assert sorted(Path(r["path"]).name for r in rejects) == sorted(bad)
    for reject in rejects:
        assert Path(reject["path"]).parent == folder
        assert bad[Path(reject["path"]).name] in reject["reason"], reject
    out = capsys.readouterr().out.splitlines()
    printed = [line for line in out if line.startswith("rejected ")]
    assert len(printed) == len(bad) and all(str(folder) in line for line in printed)
    # Larger maps are downsampled to the model's 32x64, and the job says so once, by their headers
    # (the truncated 64x128 file counts; the wide, the tiny and the exact ones do not).
    notes = [line for line in out if line.startswith("note: ")]
    assert notes == ["note: 5 label maps are larger than the model's 32x64: each is downsampled to it by nearest "
                     "neighbour (5 of 64x128; recorded in job.json)"], out
    assert json.loads((output / "job.json").read_text())["larger_inputs"] == {"64x128": 5}
    # A nested label folder gives a nested, readable output folder.
    assert (output / "images" / "256" / "00100027" / "0.png").is_file()

    rows = pq.read_table(output / "manifest.parquet").to_pylist()
    assert [(r["sample_id"], r["variant"]) for r in rows] == [(s, k) for s in sorted(good) for k in range(TEST_NUM_OUTPUTS)]
    names = sorted(good)
    # Default settings: batches of 8 (these 4 maps padded to 8), every core on one actor.
    expected = reference_images(checkpoint, np.stack([good[n] for n in names]), batch_size=8, threads=os.cpu_count())
    for n, name in enumerate(names):
        for k in range(TEST_NUM_OUTPUTS):
            image = np.asarray(Image.open(output / "images" / name / f"{k}.png"))
            np.testing.assert_array_equal(image, expected[n, k], err_msg=f"{name} variant {k}")
    assert outcome.num_written == len(good) * TEST_NUM_OUTPUTS and len(outcome.rejects) == len(bad)

    # The gallery has no photograph column for label maps alone: label | 2 variants per row.
    page = Path(mlflow.artifacts.download_artifacts(run_id=outcome.run_id, artifact_path="gallery.html",
                                                    dst_path=str(tmp_path))).read_text()
    assert "photograph" not in page and page.count("<img") == len(good) * (1 + TEST_NUM_OUTPUTS)


def test_dry_run_prints_the_resolved_config_and_touches_nothing(label_folder, checkpoint, tmp_path, capsys):
    folder, _, _ = label_folder
    assert main(["--model", str(checkpoint), "--labels", str(folder), "--output", str(tmp_path / "out"), "--dry-run"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["resolution"] == "32x64" and printed["model.num_outputs"] == TEST_NUM_OUTPUTS
    assert printed["threads_per_actor"] == os.cpu_count() and printed["num_actors"] == 1
    assert printed["model"] == str(checkpoint) and printed["data.schema"] == "cityscapes"
    assert not (tmp_path / "out").exists()


def test_schema_mismatch_is_one_line_before_any_work(label_folder, tmp_path, capsys):
    folder, _, _ = label_folder
    schema = load_schema("cityscapes").to_dict()
    schema["classes"][0]["name"] = "street"  # the same ids, but another class name
    other = make_test_checkpoint(tmp_path / "renamed.pt", seed=5, schema=schema)
    argv = ["--model", str(other), "--labels", str(folder), "--output", str(tmp_path / "out")]
    with pytest.raises(SchemaMismatch, match="class 0 is 'street' vs 'road'"):
        main(argv)
    assert entrypoint(main)(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "label schema mismatch" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()  # checked on the driver: nothing started, nothing written


def test_folder_problems_are_one_line(tmp_path, checkpoint):
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "readme.txt").write_text("nothing here")
    common = ["--model", str(checkpoint), "--output", str(tmp_path / "out")]
    with pytest.raises(UserError, match="no label maps"):
        main([*common, "--labels", str(tmp_path / "maps")])
    with pytest.raises(UserError, match="no such folder"):
        main([*common, "--labels", str(tmp_path / "missing")])
    with pytest.raises(UserError, match="unknown label schema 'nosuch'"):
        main([*common, "--labels", str(tmp_path / "maps"), "--schema", "nosuch"])


def test_a_folder_of_colour_and_id_maps_is_read_file_by_file_without_a_flag(checkpoint, tmp_path, ray_session, capsys):
    """Label type auto: one-channel maps as ids, RGB as colours, palette maps by what their
    palette means in the schema; the log counts each kind. The four maps are one scene, so
    all four give the same images."""
    rng = np.random.default_rng(7)
    trained = [label for label in LABELS if 0 <= label.train_id < 19]  # one id and one colour each
    ids = np.array([label.id for label in trained], np.uint8)[rng.integers(0, len(trained), (8, 16))]
    ids = ids.repeat(4, 0).repeat(4, 1)  # 32x64
    colors = np.zeros((256, 3), np.uint8)
    for label in trained:
        colors[label.id] = label.color
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.fromarray(ids).save(folder / "ids.png")  # mode L
    Image.fromarray(colors[ids]).save(folder / "colour.png")  # RGB
    as_palette = Image.fromarray(ids, mode="L").convert("P")
    as_palette.putpalette(colors.ravel().tolist())  # index = id, palette = the schema's colours
    as_palette.save(folder / "palette-colour.png")
    grey = Image.fromarray(ids, mode="L").convert("P")
    grey.putpalette([v for i in range(256) for v in (i, i, i)])  # a display palette: the indices are ids
    grey.save(folder / "palette-ids.png")
    assert [Image.open(folder / n).mode for n in ("ids.png", "colour.png", "palette-colour.png", "palette-ids.png")] \
        == ["L", "RGB", "P", "P"]

    output = tmp_path / "out"
    outcome = run(config_from_argv(["--model", str(checkpoint), "--labels", str(folder), "--output", str(output)]))

    assert outcome.rejects == [] and outcome.num_written == 4 * TEST_NUM_OUTPUTS
    out = capsys.readouterr().out
    assert (f"synthesize: label folder {folder}: 2 maps read as ids, 2 as colours, by each file's own type "
            "(--label-type auto)") in out, out
    assert json.loads((output / "job.json").read_text())["label_maps_read_as"] == {"ids": 2, "color": 2}
    expected = reference_images(checkpoint, train_ids(ids)[None], batch_size=8, threads=os.cpu_count())[0]
    for name in ("ids", "colour", "palette-colour", "palette-ids"):
        for k in range(TEST_NUM_OUTPUTS):
            image = np.asarray(Image.open(output / "images" / name / f"{k}.png"))
            np.testing.assert_array_equal(image, expected[k], err_msg=f"{name} variant {k}")
