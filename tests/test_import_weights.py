"""Importing the authors' TF1 checkpoints: the model must compute what TensorFlow computed.

    .venv/bin/python -m pytest tests/test_import_weights.py -q

Reference: tests/data/authors_tf/, written by TensorFlow itself (make_checkpoint.py there):
the authors' recursive_generator with slim.conv2d and slim.layer_norm for a small model
(modules 4x8, 8x16, 16x32 of widths 8, 6, 4, K = 2), random weights, saved with
tf.train.Saver, and the output TensorFlow computed on a fixed label map. No TensorFlow here.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from crn.authors import AuthorsCheckpointError, authors_state_dict, config_from_authors_tensors, tensor_names
from crn.checkpoint import load_checkpoint, model_from_checkpoint
from crn.labels import one_hot
from crn.presets import make_config
from crn.tf_checkpoint import read_tf_checkpoint, tf_checkpoint_names
from jobs.import_weights import main
from pipeline.data.schema import cityscapes_schema
from pipeline.registry.import_weights import matching_preset
from pipeline.registry.models import open_model
from pipeline.runtime import entrypoint

FIXTURE = Path(__file__).resolve().parent / "data" / "authors_tf"
FILES = ("model.ckpt.index", "model.ckpt.data-00000-of-00001")


def tensorflow_output() -> torch.Tensor:
    """TensorFlow's generator output [K, H, W, 3] as our [K, 3, H, W]."""
    return torch.from_numpy(np.load(FIXTURE / "output.npy")).permute(0, 3, 1, 2)


def our_output(model) -> torch.Tensor:
    labels = torch.from_numpy(np.load(FIXTURE / "label.npy")).long()[None]  # [1, 16, 32]
    with torch.no_grad():
        return model(one_hot(labels, 20))[0]  # [K, 3, 16, 32]


def assert_matches_tensorflow(model) -> None:
    expected = tensorflow_output()
    error = (our_output(model) - expected).abs().max().item()
    assert error <= 1e-4 * expected.abs().max().item(), f"max abs difference {error}"


def test_the_reader_finds_every_tensor_tensorflow_saved():
    tensors = read_tf_checkpoint(FIXTURE)  # the folder, through its `checkpoint` state file
    assert len(tensors) == 3 * 6 + 2
    assert tensors["g_8_conv1/weights"].shape == (3, 3, 8 + 20, 6)  # [h, w, upsampled 8 + labels 20, out]
    assert tensors["g_16_conv100/biases"].shape == (6,) and tensors["g_16_conv100/biases"].dtype == np.float32
    assert set(tensors) == set(read_tf_checkpoint(FIXTURE / "model.ckpt.index"))
    assert tf_checkpoint_names(FIXTURE) == sorted(tensors)
    heads = read_tf_checkpoint(FIXTURE, wanted=lambda name: "conv100" in name)
    assert sorted(heads) == ["g_16_conv100/biases", "g_16_conv100/weights"]


def test_imported_checkpoint_computes_what_tensorflow_computed(tmp_path):
    out = tmp_path / "authors.pt"
    assert main(["--checkpoint", str(FIXTURE / "model.ckpt"), "--out", str(out)]) == 0
    ckpt = load_checkpoint(out)
    assert ckpt["model_config"] == {"num_classes": 20, "widths": [8, 6, 4], "num_outputs": 2}
    assert ckpt["label_schema"] == cityscapes_schema().to_dict()
    expected_hashes = {name: "sha256:" + hashlib.sha256((FIXTURE / name).read_bytes()).hexdigest() for name in FILES}
    assert ckpt["extra"]["source_sha256"] == expected_hashes
    assert_matches_tensorflow(model_from_checkpoint(ckpt))


def test_registered_import_loads_from_the_registry(tmp_path):
    out = tmp_path / "authors.pt"
    assert main(["--checkpoint", str(FIXTURE), "--out", str(out), "--register", "--model-name", "crn-authors-test"]) == 0
    loaded = open_model("models:/crn-authors-test@candidate")
    assert loaded.version == "1" and loaded.description["extra"]["source"] == "authors-tf1"
    assert_matches_tensorflow(loaded.build())


def test_optimizer_slots_saved_with_the_model_are_left_out():
    tensors = dict(read_tf_checkpoint(FIXTURE))
    tensors["g_4_conv1/weights/Adam"] = np.zeros_like(tensors["g_4_conv1/weights"])
    tensors["beta1_power"] = np.float32(0.9)
    state = authors_state_dict(tensors, config_from_authors_tensors(tensors))
    assert len(state) == 20


@pytest.mark.parametrize("preset, count", [("crn-256p", 44), ("crn-512p", 50), ("crn-1024p", 56)])
def test_the_papers_models_have_the_authors_variable_counts(preset, count):
    config = make_config(preset, num_classes=20)
    names = tensor_names(config)
    assert len(names) == count
    # Tensors of the authors' shapes (zero-stride views, no memory): the architecture read
    # off them is the preset, and their sizes add up to the preset's parameter count.
    tensors = {name: np.broadcast_to(np.float32(0), _authors_shape(config, name)) for name in names}
    found = config_from_authors_tensors(tensors)
    assert found == config and matching_preset(found) == preset
    parameters = {"crn-256p": 97_875_483, "crn-512p": 98_622_851, "crn-1024p": 98_674_531}[preset]
    assert sum(t.size for t in tensors.values()) == parameters


def _authors_shape(config, name: str) -> tuple[int, ...]:
    """The shape of the authors' variable `name` (demo_*.py's recursive_generator: 1024 channels
    below 128, 512 from 128 up, 128 at 512 and 32 at 1024; 3K head channels)."""
    def dim(height: int) -> int:
        return {512: 128, 1024: 32}.get(height, 512 if height >= 128 else 1024)

    scope, variable = name.split("/", 1)
    height = int(scope.split("_")[1])
    if scope.endswith("conv100"):
        return (1, 1, dim(height), 3 * config.num_outputs) if variable == "weights" else (3 * config.num_outputs,)
    if variable != "weights":
        return (dim(height),)
    if scope.endswith("conv1"):
        upsampled = dim(height // 2) if height > 4 else 0
        return (3, 3, upsampled + config.num_classes, dim(height))
    return (3, 3, dim(height), dim(height))


def copy_fixture(folder, drop: str = "", truncate: tuple[str, int] = ("", 0)):
    """The fixture's files in `folder`, less `drop`, with `truncate` = (file, bytes kept)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        data = (FIXTURE / name).read_bytes()
        if name == truncate[0]:
            data = data[: truncate[1]]
        if name != drop:
            (folder / name).write_bytes(data)
    return folder / "model.ckpt"


def small_schema(tmp_path):
    path = tmp_path / "two.json"
    path.write_text(json.dumps({"format": "crn-label-schema/1", "name": "two",
                                "classes": [{"name": "a", "ids": [1]}], "void": {"name": "void", "ids": [0]}}))
    return path


@pytest.mark.parametrize("case, expected", [
    ("other preset", "a 16x32 model (modules g_4 .. g_16), not crn-tiny (32x64)"),
    ("missing data file", "data file model.ckpt.data-00000-of-00001 is missing"),
    ("truncated data file", "is truncated: tensor"),
    ("truncated index", "is truncated or not a checkpoint index"),
    ("no checkpoint", "no index file"),
    ("schema", "the model takes 20 label channels, but schema 'two' has 2 classes"),
])
def test_bad_input_is_one_line_naming_the_problem(case, expected, tmp_path, capsys):
    argv = ["--checkpoint", str(FIXTURE), "--out", str(tmp_path / "out.pt")]
    if case == "other preset":
        argv += ["--preset", "crn-tiny"]
    elif case == "missing data file":
        argv[1] = str(copy_fixture(tmp_path / "ckpt", drop=FILES[1]))
    elif case == "truncated data file":
        argv[1] = str(copy_fixture(tmp_path / "ckpt", truncate=(FILES[1], 10000)))
    elif case == "truncated index":
        argv[1] = str(copy_fixture(tmp_path / "ckpt", truncate=(FILES[0], 600)))
    elif case == "no checkpoint":
        argv[1] = str(tmp_path / "nothing" / "model.ckpt")
    elif case == "schema":
        argv += ["--schema", str(small_schema(tmp_path))]
    assert entrypoint(main)(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "out.pt").exists()


@pytest.mark.parametrize("change, expected", [
    ("extra", "1 tensors map to no parameter of a 16x32 model (first: g_16_conv3/weights)"),
    ("missing", "1 parameters have no tensor (first: g_8_conv2/LayerNorm/beta)"),
    ("shape", "g_16_conv100/weights has shape [1, 1, 4, 9], expected [1, 1, 4, 6] for head.weight"),
])
def test_every_tensor_is_used_and_every_parameter_set(change, expected):
    tensors = dict(read_tf_checkpoint(FIXTURE))
    config = config_from_authors_tensors(tensors)
    if change == "extra":
        tensors["g_16_conv3/weights"] = tensors["g_16_conv2/weights"]
    elif change == "missing":
        del tensors["g_8_conv2/LayerNorm/beta"]
    else:
        tensors["g_16_conv100/weights"] = np.zeros((1, 1, 4, 9), np.float32)
    with pytest.raises(AuthorsCheckpointError) as info:
        authors_state_dict(tensors, config)
    assert str(info.value) == expected
