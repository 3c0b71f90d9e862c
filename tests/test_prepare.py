"""Label maps: every source encoding gives the class maps of the documented recipe.

The recipe (pipeline/prepare.py): map each source id to its class, then keep the pixel under
each output pixel's centre. The 8-bit path checks ids by histogram and maps after
downsampling; these tests hold it to the recipe, computed here with Pillow's NEAREST, for
8-bit grey, palette and 16-bit labels, at whole and fractional reduction factors.

    .venv/bin/python -m pytest tests/test_prepare.py -q
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from store_reference import train_ids

from crn.resolution import parse_resolutions
from pipeline.data.prepare import BadInput, LabelMapper
from pipeline.data.schema import load_schema

# (source height, width) -> resolutions: 4x/2x/1x reductions, and 100x200 -> 64x128 (1.5625x)
CASES = [((128, 256), parse_resolutions("32x64,64x128,128x256")), ((100, 200), parse_resolutions("16x32,64x128"))]


def _as_mode(ids: np.ndarray, mode: str) -> Image.Image:
    if mode == "I;16":
        image = Image.fromarray(ids.astype(np.uint16))
    else:
        image = Image.fromarray(ids.astype(np.uint8))
        if mode == "P":
            image = image.convert("P")
            image.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
    assert image.mode == mode
    return image


def _recipe(ids: np.ndarray, height: int, width: int) -> np.ndarray:
    classes = Image.fromarray(train_ids(ids.astype(np.uint8)))
    return np.asarray(classes.resize((width, height), Image.Resampling.NEAREST))


@pytest.mark.parametrize("mode", ["L", "P", "I;16"])
@pytest.mark.parametrize("size,resolutions", CASES)
def test_label_maps_follow_the_recipe(mode, size, resolutions):
    mapper = LabelMapper(load_schema("cityscapes"), "ids")
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 34, size=size)  # every Cityscapes label id, 0..33
    image = _as_mode(ids, mode)
    assert np.array_equal(np.asarray(image), ids)  # the palette image keeps ids as indices

    maps = mapper(image, "labels/x.png", resolutions).maps

    for height, width in resolutions:
        got = maps[f"{height}x{width}"]
        assert got.dtype == np.uint8 and got.shape == (height, width)
        assert np.array_equal(got, _recipe(ids, height, width)), (mode, size, height)


@pytest.mark.parametrize("mode", ["L", "I;16"])
def test_ids_outside_the_schema_name_the_ids_and_pixel_count(mode):
    mapper = LabelMapper(load_schema("cityscapes"), "ids")
    ids = np.full((32, 64), 7)
    ids[0, :2] = 40
    ids[5, 5] = 41
    with pytest.raises(BadInput) as caught:
        mapper(_as_mode(ids, mode), "labels/bad.png", ((16, 32),))
    assert caught.value.path == "labels/bad.png"
    assert caught.value.reason == "label ids outside schema 'cityscapes': 40, 41 (3 pixels)"


def test_16bit_ids_past_the_table_are_outside_the_schema():
    mapper = LabelMapper(load_schema("cityscapes"), "ids")
    ids = np.full((32, 64), 7)
    ids[1, 1] = 1000
    with pytest.raises(BadInput, match=r"outside schema 'cityscapes': 1000 \(1 pixels\)"):
        mapper(_as_mode(ids, "I;16"), "labels/wide.png", ((16, 32),))


def test_colour_labels_follow_the_recipe():
    schema = load_schema("cityscapes")
    mapper = LabelMapper(schema, "color")
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 34, size=(64, 128))
    # Colour of each train class (and void) as the schema lists them.
    colours = {index: cls.colors[0] for index, cls in enumerate(schema.all_classes) if cls.colors}
    classes = train_ids(ids.astype(np.uint8))
    rgb = np.zeros((64, 128, 3), dtype=np.uint8)
    for index, colour in colours.items():
        rgb[classes == index] = colour

    maps = mapper(Image.fromarray(rgb), "labels/c.png", parse_resolutions("16x32,64x128")).maps

    assert np.array_equal(maps["64x128"], classes)
    assert np.array_equal(maps["16x32"], _recipe(ids, 16, 32))
