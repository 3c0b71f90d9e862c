"""The toy data set generator: Cityscapes layout and naming, determinism, consistent labels, variety.

    .venv/bin/python -m pytest tests/test_toy.py -q
"""
from __future__ import annotations

import hashlib
import time

import numpy as np
from PIL import Image

from pipeline.data.cityscapes import LABELS
from pipeline.data.toy import generate_toy_dataset, main, render_scene
from pipeline.runtime import entrypoint

SIZE = (64, 128)


def _digest(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.png"))}


def test_layout_and_naming_follow_cityscapes(tmp_path):
    written = generate_toy_dataset(tmp_path, num_train=4, num_val=2, seed=3, size=SIZE)
    assert len(written["train"]) == 4 and len(written["val"]) == 2
    for split, names in written.items():
        for name in names:
            city = name.split("_")[0]
            photo = tmp_path / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png"
            ids = tmp_path / "gtFine" / split / city / f"{name}_gtFine_labelIds.png"
            color = tmp_path / "gtFine" / split / city / f"{name}_gtFine_color.png"
            assert Image.open(photo).mode == "RGB" and Image.open(photo).size == (128, 64)
            assert Image.open(ids).mode == "L"
            assert Image.open(color).mode == "RGBA"  # like Cityscapes' colour labels
            parts = name.split("_")
            assert len(parts) == 3 and len(parts[1]) == 6 and len(parts[2]) == 6


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    generate_toy_dataset(tmp_path / "a", 3, 1, seed=7, size=SIZE)
    generate_toy_dataset(tmp_path / "b", 3, 1, seed=7, size=SIZE)
    generate_toy_dataset(tmp_path / "c", 3, 1, seed=8, size=SIZE)
    a, b, c = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert a == b
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a)


def test_a_scene_depends_only_on_its_own_seed_and_index(tmp_path):
    generate_toy_dataset(tmp_path / "few", 2, 0, seed=5, size=SIZE)
    generate_toy_dataset(tmp_path / "many", 5, 0, seed=5, size=SIZE)
    few, many = _digest(tmp_path / "few"), _digest(tmp_path / "many")
    assert all(many[k] == v for k, v in few.items())


def test_colour_labels_are_the_cityscapes_colours_of_the_label_ids(tmp_path):
    written = generate_toy_dataset(tmp_path, 3, 0, seed=1, size=SIZE)
    colour_of = {label.id: label.color for label in LABELS if label.id >= 0}
    for name in written["train"]:
        city = name.split("_")[0]
        ids = np.asarray(Image.open(tmp_path / f"gtFine/train/{city}/{name}_gtFine_labelIds.png"))
        rgba = np.asarray(Image.open(tmp_path / f"gtFine/train/{city}/{name}_gtFine_color.png"))
        assert (rgba[..., 3] == 255).all()
        for label_id in np.unique(ids):
            assert (rgba[ids == label_id][:, :3] == colour_of[int(label_id)]).all()


def test_scenes_hold_street_classes_with_several_looks():
    """Across scenes: the street classes appear, and cars and skies come in several colours."""
    present = set()
    car_colours, sky_warmth = [], []
    for index in range(24):
        photo, ids = render_scene(np.random.default_rng([0, 0, index]), 128, 256)
        present |= set(np.unique(ids).tolist())
        if (ids == 26).sum() > 50:
            car_colours.append(np.median(photo[ids == 26], axis=0))
        sky = photo[ids == 23].astype(float)
        sky_warmth.append((sky[:, 0] - sky[:, 2]).mean())  # red minus blue
    # road, sidewalk, building, pole, traffic sign, vegetation, sky, person, car
    assert {7, 8, 11, 17, 20, 21, 23, 24, 26} <= present
    assert present <= {label.id for label in LABELS}
    # cars: at least three clearly different body colours
    distinct = []
    for colour in car_colours:
        if all(np.abs(colour - d).max() > 60 for d in distinct):
            distinct.append(colour)
    assert len(distinct) >= 3
    # skies: blue days (much more blue than red) and orange dusks (more red than blue)
    assert min(sky_warmth) < -50 and max(sky_warmth) > 0


def test_drawing_is_fast_enough_for_tests_and_benchmarks():
    rng = np.random.default_rng(0)
    render_scene(rng, 256, 512)  # warm-up
    # CPU time of this process, not wall-clock time: other work on a shared machine does not count.
    start = time.process_time()
    for _ in range(5):
        render_scene(rng, 256, 512)
    per_scene = (time.process_time() - start) / 5
    assert per_scene < 0.5, f"{per_scene * 1000:.0f} ms of CPU per 256x512 scene"  # ~50 ms here


def test_command_line_writes_data_set_and_preview(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "toy"), "--train", "2", "--val", "1", "--size", "32x64",
                 "--preview", str(tmp_path / "preview.png")]) == 0
    assert len(list((tmp_path / "toy" / "leftImg8bit").rglob("*.png"))) == 3
    sheet = Image.open(tmp_path / "preview.png")
    assert sheet.size == (128, 96)  # 3 scenes of photo + label side by side
    assert entrypoint(main)(["--out", str(tmp_path / "x"), "--size", "big"]) == 2  # one line, exit code 2
