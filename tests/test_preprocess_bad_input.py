"""Bad input: each kind is rejected with its path and reason, every good sample is still written;
what makes the whole job impossible is one line on stderr and exit code 2.

    .venv/bin/python -m pytest tests/test_preprocess_bad_input.py -q
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from store_reference import cityscapes_files, expected_sample, read_store_plainly

from jobs.preprocess import main
from pipeline.data.store import open_store
from pipeline.data.toy import generate_toy_dataset
from pipeline.runtime import entrypoint

run = entrypoint(main)  # what the command line runs: user errors become exit code 2

RESOLUTIONS = "16x32,64x128"


def _resize_pair(label: Path, photo: Path, size: tuple[int, int]) -> None:
    """Make a sample (height, width) big: nearest for the label, so it stays valid."""
    height, width = size
    Image.open(label).resize((width, height), Image.Resampling.NEAREST).save(label)
    Image.open(photo).resize((width, height), Image.Resampling.BICUBIC).save(photo)


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    """A 14 + 2 scene toy data set at 64x128 in which samples 0..9 are broken, one way each.

    Returns (source folder, {sample id: (user-facing path, reason fragment)}, good sample ids).
    """
    root = tmp_path_factory.mktemp("damaged")
    written = generate_toy_dataset(root, num_train=14, num_val=2, seed=11, size=(64, 128))
    names = written["train"]
    files = {name: cityscapes_files(root, "train", name) for name in names}  # (label, photo)
    expected = {}

    label, photo = files[names[0]]  # a "PNG" that is text
    photo.write_text("this is not an image")
    expected[names[0]] = (photo, "photo is not an image file (20 bytes in no image format Pillow knows)")

    label, photo = files[names[1]]  # a truncated PNG
    label.write_bytes(label.read_bytes()[: len(label.read_bytes()) // 2])
    expected[names[1]] = (label, "unreadable label image")

    label, photo = files[names[2]]  # label and photo of different sizes
    Image.open(photo).resize((126, 63)).save(photo)
    expected[names[2]] = (label, "label 64x128 and photo")

    label, photo = files[names[3]]  # a label without its photo
    photo.unlink()
    expected[names[3]] = (label, "label has no photo")

    label, photo = files[names[4]]  # a photo without its label
    label.unlink()
    expected[names[4]] = (photo, "photo has no label (expected ")

    label, photo = files[names[5]]  # ids the schema does not know
    ids = np.asarray(Image.open(label)).copy()
    ids[0, :3] = [40, 41, 40]
    Image.fromarray(ids).save(label)
    expected[names[5]] = (label, "label ids outside schema 'cityscapes': 40, 41 (3 pixels)")

    label, photo = files[names[6]]  # not 1:2
    _resize_pair(label, photo, (64, 100))
    expected[names[6]] = (label, "wrong aspect ratio: 64x100 is not h x 2h")

    label, photo = files[names[7]]  # 1:2 but smaller than the largest requested resolution
    _resize_pair(label, photo, (32, 64))
    expected[names[7]] = (label, "too small: 32x64 is smaller than the requested resolution 64x128")

    # the same sample id twice: a copy of scene 8 in another city's folder of the val split
    label, photo = files[names[8]]
    for path, top in ((label, "gtFine"), (photo, "leftImg8bit")):
        copy = root / top / "val" / "zz-copies" / path.name
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, copy)
        expected[f"{names[8]} copy {top}"] = (copy, f"duplicate sample id '{names[8]}'")

    label, photo = files[names[9]]  # a colour label with a colour the schema does not know
    color = label.with_name(label.name.replace("_labelIds", "_color"))
    rgba = np.asarray(Image.open(color)).copy()
    rgba[5, 5, :3] = [1, 2, 3]
    Image.fromarray(rgba).save(color)
    # (only a problem with --label-type color; with ids this sample is good)

    label, photo = files[names[10]]  # an empty label file
    label.write_bytes(b"")
    expected[names[10]] = (label, "empty label file (0 bytes)")

    label, photo = files[names[11]]  # a folder where the label file should be
    label.unlink()
    label.mkdir()
    expected[names[11]] = (photo, f"photo's label {label} is a folder, not a file")

    label, photo = files[names[12]]  # a label whose header claims 128 megapixels
    label.write_bytes(_png_header(width=16384, height=8192))
    expected[names[12]] = (label, "label image too large: its header claims more than 89 megapixels")

    city = root / "leftImg8bit" / "train" / "toyville"
    odd = os.fsencode(city) + b"/caf\xe9_000000_000019_leftImg8bit.png"  # Latin-1, not UTF-8
    Path(os.fsdecode(odd)).write_bytes(photo.read_bytes())
    expected["odd name"] = (odd.decode("utf-8", "backslashreplace"), "file name is not valid UTF-8")
    (city / "gone_000000_000019_leftImg8bit.png").symlink_to(root / "nowhere.png")
    expected["dangling"] = (city / "gone_000000_000019_leftImg8bit.png", f"dangling symlink to {root / 'nowhere.png'}")
    (city / "again").symlink_to(city.parent)  # a folder link back up: followed once, it would never end
    expected["loop"] = (city / "again", f"symlink loop: leads back to {city.parent}, not followed")

    notes = root / "leftImg8bit" / "train" / "toyville" / "notes.txt"  # files that are not images
    notes.write_text("taken on a sunny day")
    expected["notes"] = (notes, "not a Cityscapes photo")
    readme = root / "gtFine" / "train" / "toyville" / "README.md"
    readme.write_text("# labels")
    expected["readme"] = (readme, "not a Cityscapes label")

    good = [n for n in names if n not in expected and n != names[9]] + [names[9]] + written["val"]
    return root, expected, sorted(good), names[9]


def _png_header(width: int, height: int) -> bytes:
    """A PNG signature and header claiming width x height grey pixels, and no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def _rejects(out: Path) -> dict[str, str]:
    return {r["path"]: r["reason"] for r in json.loads((out / "manifest.json").read_text())["rejects"]}


def test_each_bad_input_is_rejected_with_path_and_reason_and_good_ones_are_written(damaged, tmp_path, capsys,
                                                                                     ray_session):
    source, expected, good, _ = damaged
    out = tmp_path / "store"
    assert main(["--source", str(source), "--out", str(out), "--resolutions", RESOLUTIONS]) == 0
    rejects = _rejects(out)
    for path, reason in expected.values():
        assert str(path) in rejects, f"{path} not rejected"
        assert reason in rejects[str(path)], rejects[str(path)]
    assert len(rejects) == len(expected)
    # one warning line per reject, naming the path
    warnings = [l for l in capsys.readouterr().err.splitlines() if l.startswith("warning: rejected ")]
    assert sorted(warnings) == sorted(f"warning: rejected {p}: {r}" for p, r in rejects.items())
    # every good sample is in the store, exactly as the source holds it
    store = open_store(out)
    stored = {split: read_store_plainly(out, split, "64x128") for split in store.splits}
    assert sorted(sid for rows in stored.values() for sid in rows) == good
    for split, rows in stored.items():
        for sample_id, (label, photo) in rows.items():
            want_label, want_photo = expected_sample(*cityscapes_files(source, split, sample_id), "64x128")
            np.testing.assert_array_equal(label, want_label)
            np.testing.assert_array_equal(photo, want_photo)


def test_colours_outside_the_schema_are_rejected_when_asked(damaged, tmp_path, ray_session):
    source, expected, good, bad_colour = damaged
    out = tmp_path / "store"
    # (by default a colour outside the schema is void, as the authors read labels: test_unknown_labels.py)
    assert main(["--source", str(source), "--out", str(out), "--resolutions", RESOLUTIONS, "--label-type", "color",
                 "--unknown-labels", "reject"]) == 0
    rejects = _rejects(out)
    (path,) = [p for p in rejects if bad_colour in p]
    assert path.endswith("_gtFine_color.png")
    assert rejects[path] == "label colours outside schema 'cityscapes': (1,2,3) (1 pixels)"
    assert bad_colour not in {sid for split in ("train", "val") for sid in read_store_plainly(out, split, "16x32")}


def _one_line_error(capsys, ray_ran: bool = False) -> str:
    """The job's error line; exactly one. (Ray Data's own log lines may surround it.)"""
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(lines) == 1, err
    if not ray_ran:
        assert "Traceback" not in err, err
    return lines[0]


def test_no_good_samples_is_an_error_and_writes_no_store(toy_source, tmp_path, capsys, ray_session):
    source = tmp_path / "all-bad"
    shutil.copytree(toy_source, source)
    for label in source.glob("gtFine/*/*/*_labelIds.png"):  # every scene 128x200: wrong aspect ratio
        photo = source / "leftImg8bit" / label.parent.relative_to(source / "gtFine") / label.name.replace(
            "_gtFine_labelIds.png", "_leftImg8bit.png")
        _resize_pair(label, photo, (128, 200))
    out = tmp_path / "store"
    assert run(["--source", str(source), "--out", str(out), "--resolutions", RESOLUTIONS]) == 2
    line = _one_line_error(capsys, ray_ran=True)
    assert line.startswith(f"error: no good samples in {source}: all 12 inputs rejected (first: ")
    assert "wrong aspect ratio" in line
    assert not out.exists(), "a run that wrote no sample leaves no store folder behind"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--schema", "nope"], "error: unknown label schema 'nope'"),
        (["--schema", "{schema_file}"], "error: label schema {schema_file}: not a label schema"),
        (["--resolutions", "48x96"], "error: --resolutions: resolution 48x96 is not h x 2h"),
        (["--out", "{a_file}/store"], "error: cannot write to {a_file}/store"),
        (["--source", "{missing}"], "error: source {missing}: no such folder"),
        (["--source", "{empty}"], "error: source {empty}: split 'train' not found"),
        (["--source", "{empty}", "--format", "paired"], "error: source {empty}: no labels/ folder"),
        (["--source", "{empty_pairs}", "--format", "paired"], "error: no good samples in {empty_pairs}: no label/photo pairs"),
    ],
)
def test_impossible_jobs_stop_with_one_line(toy_source, tmp_path, capsys, args, message):
    places = {
        "schema_file": tmp_path / "schema.json",
        "a_file": tmp_path / "a-file",
        "missing": tmp_path / "missing",
        "empty": tmp_path / "empty",
        "empty_pairs": tmp_path / "empty-pairs",
    }
    places["schema_file"].write_text(json.dumps({"name": "x"}))
    places["a_file"].write_text("a file, not a folder")
    places["empty"].mkdir()
    (places["empty_pairs"] / "images").mkdir(parents=True)
    (places["empty_pairs"] / "labels").mkdir()
    argv = ["--source", str(toy_source), "--out", str(tmp_path / "store"), "--resolutions", RESOLUTIONS]
    argv += [a.format(**places) for a in args]  # later flags win
    assert run(argv) == 2
    line = _one_line_error(capsys)
    assert line.startswith(message.format(**places)), line
    assert not (tmp_path / "store" / "manifest.json").exists()
