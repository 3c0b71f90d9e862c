"""The vivid targets (--photo-tone vivid): the authors' tone mapping, and a store that has it.

    .venv/bin/python -m pytest tests/test_vivid.py -q

References, written here from the authors' MATLAB (optional_preprocessing/*.m), not from
pipeline.data.vivid:
- WLS smoothing: the energy |u - L|^2 + lambda * sum a_pq (u_p - u_q)^2 over 4-neighbour pairs,
  its normal equations assembled pair by pair into a dense matrix and solved densely;
- the tone mapping: generate_vivid_images_512full.m, tonemapLAB.m and sigmoid.m written out;
- colour: the library's conversion (scikit-image, adapted to D50 like MATLAB's
  makecform('srgb2lab')), itself checked against CIELAB's formulas with the published
  Bradford-adapted sRGB -> XYZ(D50) matrix.
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq

from jobs.preprocess import main
from pipeline.data.vivid import lab_to_srgb, srgb_to_lab, vivid, vivid_rgb, wls_filter

# sRGB (linear) -> XYZ relative to D50, Bradford-adapted (brucelindbloom.com, "RGB/XYZ Matrices").
SRGB_TO_XYZ_D50 = np.array([[0.4360747, 0.3850649, 0.1430804],
                            [0.2225045, 0.7168786, 0.0606169],
                            [0.0139322, 0.0971045, 0.7141733]])
D50_WHITE = np.array([0.96422, 1.0, 0.82521])


def dense_wls(image: np.ndarray, smoothing: float, alpha: float = 1.2) -> np.ndarray:
    height, width = image.shape
    log_image = np.log(image + np.finfo(float).eps)
    system = np.eye(height * width)
    for i in range(height):
        for j in range(width):
            for di, dj in ((1, 0), (0, 1)):
                if i + di < height and j + dj < width:
                    p, q = i * width + j, (i + di) * width + j + dj
                    weight = smoothing / (abs(log_image[i, j] - log_image[i + di, j + dj]) ** alpha + 1e-4)
                    system[p, p] += weight
                    system[q, q] += weight
                    system[p, q] -= weight
                    system[q, p] -= weight
    return np.linalg.solve(system, image.ravel()).reshape(height, width)


def lab_from_srgb(rgb: np.ndarray) -> np.ndarray:
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    t = (linear @ SRGB_TO_XYZ_D50.T) / D50_WHITE
    f = np.where(t > (6 / 29) ** 3, np.cbrt(t), t / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def srgb_from_lab(lab: np.ndarray) -> np.ndarray:
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], axis=-1)
    t = np.where(f > 6 / 29, f ** 3, 3 * (6 / 29) ** 2 * (f - 4 / 29))
    linear = (t * D50_WHITE) @ np.linalg.inv(SRGB_TO_XYZ_D50).T
    linear = np.clip(linear, 0, None)
    rgb = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    return np.clip(rgb, 0, 1)


def sigmoid(x, a):  # sigmoid.m
    return (1 / (1 + np.exp(-a * x)) - 0.5) * (0.5 / (1 / (1 + np.exp(-a * 0.5)) - 0.5))


def tonemap_lab(lab, l0, l1, val0, val1, val2, exposure):  # tonemapLAB.m for positive vals, gamma 1
    lightness = lab[..., 0]
    diff0 = sigmoid((lightness - l0) / 100, val0) * 100
    diff1 = sigmoid((l0 - l1) / 100, val1) * 100
    base = sigmoid((exposure * l1 - 56) / 100, val2) * 100 + 56
    out = lab.copy()
    out[..., 0] = base + diff1 + diff0
    out[..., 1:] *= 1.1
    return lab_to_srgb(out)


def reference_vivid(photo: np.ndarray) -> np.ndarray:
    """generate_vivid_images_512full.m on one image already at its size."""
    rgb = np.clip(photo / 255.0, 0, 1) ** 0.75
    lab = srgb_to_lab(rgb)
    l0, l1 = dense_wls(lab[..., 0], 0.125), dense_wls(lab[..., 0], 0.50)
    fine = tonemap_lab(lab, l0, l1, 25, 1, 1, 1.0)
    medium = tonemap_lab(lab, l0, l1, 1, 40, 1, 1.0)
    coarse = tonemap_lab(lab, l0, l1, 4, 1, 15, 1.10)
    return (coarse + medium + fine) / 3


def test_colour_conversion_is_cielab_relative_to_d50():
    rgb = np.random.default_rng(2).uniform(0, 1, (6, 8, 3))
    # The published matrix has 7 digits and skimage's its own 6: agreement to a few thousandths.
    np.testing.assert_allclose(srgb_to_lab(rgb), lab_from_srgb(rgb), atol=1e-2)
    np.testing.assert_allclose(lab_to_srgb(srgb_to_lab(rgb)), rgb, atol=1e-9)
    grey = srgb_to_lab(np.full((1, 1, 3), 0.5))[0, 0]
    # Neutral stays neutral (so the saturation leaves greys grey); D50 Lab without adapting
    # from D65 would tint it by several units.
    assert abs(grey[1]) < 5e-3 and abs(grey[2]) < 5e-3
    out_of_gamut = np.array([[[60.0, 90.0, 90.0]]])
    np.testing.assert_allclose(lab_to_srgb(out_of_gamut), srgb_from_lab(out_of_gamut), atol=1e-3)


def test_wls_filter_solves_the_weighted_least_squares_problem():
    rng = np.random.default_rng(0)
    image = np.clip(rng.uniform(5, 95, (7, 11)) + 40 * (np.arange(11) > 5), 0, 100)  # noise and an edge
    for smoothing in (0.125, 0.5):
        np.testing.assert_allclose(wls_filter(image, smoothing), dense_wls(image, smoothing), rtol=1e-9, atol=1e-9)
    # Smoothing, but not across the edge: the step survives much better than the noise.
    smooth = wls_filter(image, 0.5)
    assert np.std(np.diff(smooth[:, :6], axis=1)) < 0.5 * np.std(np.diff(image[:, :6], axis=1))


def test_vivid_equals_the_authors_recipe_on_a_small_image():
    rng = np.random.default_rng(1)
    photo = rng.integers(20, 236, size=(8, 16, 3)).astype(np.uint8)
    photo[:, 8:] //= 3  # a dark half: an edge for the smoothing to keep
    expected = reference_vivid(photo)
    np.testing.assert_allclose(vivid_rgb(photo), expected, atol=1e-5)
    assert np.abs(vivid(photo).astype(int) - np.round(expected * 255)).max() <= 1  # 8-bit, up to a rounding tie
    assert vivid(photo).mean() > photo.mean()  # gamma 0.75 brightens


def _parts(store) -> dict[str, dict[str, list]]:
    manifest = json.loads((store / "manifest.json").read_text())
    return {f"{split}/{i}": pq.read_table(store / f["path"]).to_pydict()
            for split, entry in manifest["splits"].items() for i, f in enumerate(entry["files"])}


def test_a_vivid_store_differs_from_a_plain_one_only_in_its_photos(toy_source, tmp_path, ray_session):
    args = ["--source", str(toy_source), "--resolutions", "16x32,32x64"]
    assert main([*args, "--out", str(tmp_path / "plain")]) == 0
    assert main([*args, "--out", str(tmp_path / "vivid"), "--photo-tone", "vivid"]) == 0
    plain_manifest = json.loads((tmp_path / "plain" / "manifest.json").read_text())
    vivid_manifest = json.loads((tmp_path / "vivid" / "manifest.json").read_text())
    assert (plain_manifest["photo_tone"], vivid_manifest["photo_tone"]) == ("plain", "vivid")
    assert plain_manifest["key"] != vivid_manifest["key"]  # another store, not a reuse of the plain parts
    plain, toned = _parts(tmp_path / "plain"), _parts(tmp_path / "vivid")
    assert plain.keys() == toned.keys()
    for part, columns in plain.items():
        assert columns.keys() == toned[part].keys()
        for name, values in columns.items():
            if not name.startswith("photo_"):
                assert toned[part][name] == values, (part, name)
                continue
            height, width = (int(v) for v in name.removeprefix("photo_").split("x"))
            for before, after in zip(values, toned[part][name]):
                before = np.frombuffer(before, np.uint8).reshape(height, width, 3)
                after = np.frombuffer(after, np.uint8).reshape(height, width, 3)
                assert np.array_equal(after, vivid(before))  # each resolution's photo tone-mapped
                assert not np.array_equal(after, before)

