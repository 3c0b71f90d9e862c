"""Label values the schema lacks: void for colour labels (the authors' reading), up to a limit.

    .venv/bin/python -m pytest tests/test_unknown_labels.py -q

The authors read colour labels through the palette (helper.get_semantic_map) and every
other colour becomes void. A real GTA5 label has 17 pixels of (20, 20, 20); it must be
stored, those pixels void, and counted in the manifest. A map with 5% unknown pixels is a
wrong schema and is rejected with its reason. Label ids stay strict unless asked.
Reference: the class map each label image was painted from, with its unknown pixels set
to void by hand.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from store_reference import read_store_plainly

from crn.resolution import parse_resolutions
from jobs.preprocess import main
from pipeline.data.prepare import BadInput, LabelMapper
from pipeline.data.schema import load_schema

SCHEMA = load_schema("cityscapes")
VOID = SCHEMA.void_index
HEIGHT, WIDTH = 64, 128
FULL = parse_resolutions(f"{HEIGHT}x{WIDTH}")


def painted(seed: int, unknown_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """(RGB label image, the class map it means): random train classes in blocks, and
    `unknown_pixels` pixels of the colour (20, 20, 20), which no Cityscapes class has."""
    rng = np.random.default_rng(seed)
    classes = np.kron(rng.integers(0, VOID, size=(8, 16)), np.ones((8, 8), dtype=np.int64)).astype(np.uint8)
    rgb = np.array([c.colors[0] for c in SCHEMA.classes], dtype=np.uint8)[classes]
    flat = rng.choice(HEIGHT * WIDTH, size=unknown_pixels, replace=False)
    rgb.reshape(-1, 3)[flat] = (20, 20, 20)
    classes.reshape(-1)[flat] = VOID
    return rgb, classes


def test_a_few_unknown_colours_become_void_and_are_counted():
    rgb, expected = painted(0, 17)
    mapped = LabelMapper(SCHEMA, "color")(Image.fromarray(rgb), "labels/gta.png", FULL)
    assert mapped.unknown_pixels == 17
    assert np.array_equal(mapped.maps[str(FULL[0])], expected)


@pytest.mark.parametrize("policy, reason", [
    ("void", "label colours outside schema 'cityscapes': (20,20,20) (410 pixels, 5.00% of the map; more than 1% "
             "is a wrong schema, not void)"),
    ("reject", "label colours outside schema 'cityscapes': (20,20,20) (410 pixels)"),
])
def test_too_many_unknown_colours_or_the_strict_policy_reject_the_map(policy, reason):
    rgb, _ = painted(1, 410)  # 5.0% of 64 x 128
    with pytest.raises(BadInput) as caught:
        LabelMapper(SCHEMA, "color", policy)(Image.fromarray(rgb), "labels/x.png", FULL)
    assert caught.value.reason == reason


@pytest.mark.parametrize("mode", ["L", "I;16"])
def test_label_ids_are_strict_unless_asked(mode):
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 34, size=(HEIGHT, WIDTH))  # every Cityscapes label id
    ids[3, :5] = 40  # 5 pixels of an id no class has
    image = Image.fromarray(ids.astype(np.uint16 if mode == "I;16" else np.uint8))
    assert image.mode == mode
    with pytest.raises(BadInput, match=r"label ids outside schema 'cityscapes': 40 \(5 pixels\)$"):
        LabelMapper(SCHEMA, "ids")(image, "labels/ids.png", FULL)
    mapped = LabelMapper(SCHEMA, "ids", "void")(image, "labels/ids.png", FULL)
    expected = SCHEMA.id_table()[np.where(ids == 40, 0, ids)]  # id 0 is void in Cityscapes
    assert mapped.unknown_pixels == 5 and np.array_equal(mapped.maps[str(FULL[0])], expected)
    with pytest.raises(BadInput, match=r"\(5 pixels, 0.06% of the map; more than 0.05% is a wrong schema"):
        LabelMapper(SCHEMA, "ids", "void", max_unknown_fraction=0.0005)(image, "labels/ids.png", FULL)


def test_the_preprocessing_job_stores_void_counts_them_and_rejects_a_wrong_schema(tmp_path, ray_session):
    source = tmp_path / "gta5"
    expected = {}
    for name, (seed, unknown) in {"00001": (3, 0), "00002": (4, 17), "00003": (5, 410)}.items():
        rgb, classes = painted(seed, unknown)
        for folder, image in (("labels", rgb), ("images", np.full((HEIGHT, WIDTH, 3), 90 + unknown % 7, np.uint8))):
            (source / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(source / folder / f"{name}.png")
        expected[name] = classes
    out = tmp_path / "store"
    assert main(["--source", str(source), "--out", str(out), "--format", "gta5",
                 "--resolutions", f"32x64,{HEIGHT}x{WIDTH}"]) == 0

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["unknown_labels"] == {
        "policy": "void", "max_fraction": 0.01,
        "samples": [{"sample_id": "00002", "pixels": 17, "fraction": round(17 / (HEIGHT * WIDTH), 6)}],
    }
    assert manifest["rejects"] == [{"path": str(source / "labels" / "00003.png"),
                                    "reason": "label colours outside schema 'cityscapes': (20,20,20) (410 pixels, "
                                              "5.00% of the map; more than 1% is a wrong schema, not void)"}]
    stored = read_store_plainly(out, "train", f"{HEIGHT}x{WIDTH}")
    assert sorted(stored) == ["00001", "00002"]
    for name, (label, _photo) in stored.items():
        assert np.array_equal(label, expected[name]), name
