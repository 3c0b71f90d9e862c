"""The export job writes a registered generator as ONNX and TorchScript that compute what it does.

    .venv/bin/python -m pytest tests/test_export.py -q

- A registered crn-tiny version (tests/synth_models.py) exported in both formats by
  `jobs/export.py`: onnxruntime runs the ONNX file and torch.jit.load the TorchScript file on
  toy street scenes at the model's size, in batches of 1 and 3, and both equal the network
  that `open_model(...).build()` gives, fed one-hot maps by crn.labels, within 1e-4
  relative; another model's images are far outside that, so the comparison can fail.
- The files, export.json and the measured differences are on the MLflow run that
  registered the version (artifacts under export/, metrics), and a tag per format on the version.
- A plain checkpoint file is exported without logging; label maps from a store are used
  when one is given; an export that computes something else fails and writes nothing.
- A bad format, a missing model and a size the model cannot take are one-line errors.
"""
from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import mlflow
import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from mlflow.tracking import MlflowClient
from synth_models import make_test_checkpoint

from crn.labels import one_hot
from jobs.export import main
from pipeline.data.schema import INVALID, load_schema
from pipeline.data.toy import render_scene
from pipeline.errors import UserError
from pipeline.export import job as export_job
from pipeline.export.config import ExportConfig
from pipeline.export.job import MAX_REL_DIFF, run
from pipeline.registry.models import log_and_register, open_model
from pipeline.runtime import setup_mlflow, work_dir

pytestmark = pytest.mark.usefixtures("one_torch_thread")
MODEL_NAME = "crn-export-test"
HEIGHT, WIDTH = 32, 64  # crn-tiny's top resolution


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_test_checkpoint(tmp_path_factory.mktemp("export") / "model.pt", seed=5)


@pytest.fixture(scope="module")
def version(checkpoint) -> str:
    setup_mlflow("test-export")
    with mlflow.start_run():
        return log_and_register(checkpoint, MODEL_NAME)


@pytest.fixture(scope="module")
def exported(version) -> Path:
    """Both formats, written to the default folder by the job's entry point; the folder."""
    assert main(["--model", f"models:/{MODEL_NAME}/{version}"]) == 0
    return work_dir() / "exports" / f"{MODEL_NAME}-v{version}"


def scenes(count: int, first_seed: int = 100) -> np.ndarray:
    """Toy street scenes at the model's size as Cityscapes class indices (not the job's seeds)."""
    schema = load_schema("cityscapes")
    table = schema.id_table()
    table = np.where(table == INVALID, schema.void_index, table).astype(np.uint8)
    return np.stack([np.take(table, render_scene(np.random.default_rng(seed), HEIGHT, WIDTH)[1])
                     for seed in range(first_seed, first_seed + count)])


def eager(checkpoint_path: Path, labels: np.ndarray) -> np.ndarray:
    network = open_model(str(checkpoint_path)).build()
    with torch.inference_mode():
        return network(one_hot(torch.from_numpy(labels), network.config.num_classes)).numpy()


def relative_difference(outputs: np.ndarray, reference: np.ndarray) -> float:
    assert outputs.shape == reference.shape and outputs.dtype == np.float32
    return float(np.abs(outputs.astype(np.float64) - reference).max() / np.abs(reference).max())


def run_onnx(path: Path, labels: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"labels": labels})[0]


def run_torchscript(path: Path, labels: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 calls TorchScript deprecated
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.inference_mode():
        return module(torch.from_numpy(labels)).numpy()


def test_both_files_and_their_record_are_written(exported, version):
    assert sorted(p.name for p in exported.iterdir()) == ["export.json", "generator.onnx", "generator.torchscript.pt"]
    record = json.loads((exported / "export.json").read_text())
    assert record["model"]["uri"] == f"models:/{MODEL_NAME}/{version}"
    assert record["input"]["shape"] == ["batch", HEIGHT, WIDTH] and record["input"]["dtype"] == "uint8"
    assert record["output"]["shape"] == ["batch", 2, 3, HEIGHT, WIDTH]
    assert record["schema"] == load_schema("cityscapes").to_dict()
    for fmt in ("onnx", "torchscript"):
        assert record["files"][fmt]["max_rel_diff"] <= MAX_REL_DIFF
    model = onnx.load(str(exported / "generator.onnx"))
    onnx.checker.check_model(model)
    assert {o.domain: o.version for o in model.opset_import}[""] == 18
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [HEIGHT, WIDTH]  # batch free, size fixed
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_the_exported_file_computes_what_the_model_does(exported, checkpoint, tmp_path, fmt, batch):
    labels = scenes(batch)
    assert len(np.unique(labels)) > 5  # a street scene, not a blank map
    runner, name = (run_onnx, "generator.onnx") if fmt == "onnx" else (run_torchscript, "generator.torchscript.pt")
    outputs = runner(exported / name, labels)
    reference = eager(checkpoint, labels)
    assert relative_difference(outputs, reference) <= MAX_REL_DIFF
    # The comparison can fail: another model's images are nowhere near.
    other = eager(make_test_checkpoint(tmp_path / "other.pt", seed=6), labels)
    assert relative_difference(outputs, other) > 100 * MAX_REL_DIFF


def test_the_files_and_differences_are_on_the_versions_run(exported, version, tmp_path):
    client = MlflowClient()
    model_version = client.get_model_version(MODEL_NAME, version)
    run_id = model_version.run_id
    logged = {Path(a.path).name for a in client.list_artifacts(run_id, "export")}
    assert logged == {"export.json", "generator.onnx", "generator.torchscript.pt"}
    local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="export/generator.onnx",
                                                     dst_path=str(tmp_path)))
    assert local.read_bytes() == (exported / "generator.onnx").read_bytes()
    metrics = client.get_run(run_id).data.metrics
    record = json.loads((exported / "export.json").read_text())
    for fmt in ("onnx", "torchscript"):
        assert metrics[f"export.{fmt}.max_rel_diff"] == pytest.approx(record["files"][fmt]["max_rel_diff"])
        assert metrics[f"export.{fmt}.max_abs_diff"] == pytest.approx(record["files"][fmt]["max_abs_diff"])
    assert model_version.tags["crn.export.onnx"] == f"runs:/{run_id}/export/generator.onnx"


def test_a_checkpoint_file_is_exported_and_nothing_logged(checkpoint, tmp_path):
    outcome = run(ExportConfig(model=str(checkpoint), format=("torchscript",), out=str(tmp_path / "out")))
    assert outcome.run_id is None
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["export.json", "generator.torchscript.pt"]
    labels = scenes(2)
    assert relative_difference(run_torchscript(tmp_path / "out" / "generator.torchscript.pt", labels),
                               eager(checkpoint, labels)) <= MAX_REL_DIFF


def test_the_check_takes_label_maps_from_a_store_when_given(checkpoint, toy_store, tmp_path):
    outcome = run(ExportConfig(model=str(checkpoint), format=("torchscript",), store=str(toy_store),
                               out=str(tmp_path / "out")))
    assert "store" in outcome.label_source and "valmont_" in outcome.label_source  # the toy val split's city
    assert json.loads((tmp_path / "out" / "export.json").read_text())["checked_on"] == outcome.label_source


def test_an_export_that_computes_something_else_fails_and_writes_nothing(checkpoint, tmp_path, monkeypatch):
    def off_by_a_little(data: bytes, labels: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(io.BytesIO(data))
        outputs = module(torch.from_numpy(labels)).detach().numpy()
        return outputs + np.float32(1e-3) * np.abs(outputs).max()

    monkeypatch.setitem(export_job.RUNNERS, "torchscript", off_by_a_little)
    with pytest.raises(UserError, match="torchscript export .* differs") as error:
        run(ExportConfig(model=str(checkpoint), format=("torchscript",), out=str(tmp_path / "out")))
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["--format", "png"], "--format: unknown format 'png'"),
    (["--model", "models:/crn-export-missing/1"], "crn-export-missing"),
    (["--size", "64x128"], "takes label maps of 32x64 only"),
    (["--size", "30x60"], "--size: resolution 30x60 is not"),
])
def test_mistakes_are_one_line_errors(checkpoint, tmp_path, args, message):
    with pytest.raises(UserError) as error:
        main(["--model", str(checkpoint), "--out", str(tmp_path / "out"), *args])
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


def test_the_onnx_files_layer_norms_are_as_accurate_as_pytorchs():
    # onnxruntime sums a group in one float32 pass: at the 256p model's top (32 x 256 x 512
    # values) a plain GroupNorm came out about 9e-5 relative off float64, the two-step one 4e-7.
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(1, 32, eps=1e-12)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = 10 * torch.randn(1, 32, 256, 512) + 3
    program = torch.onnx.export(export_job.with_two_step_norms(torch.nn.Sequential(norm).eval()), (x,), dynamo=True,
                                opset_version=export_job.ONNX_OPSET, verbose=False)
    session = onnxruntime.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        exact = torch.nn.functional.group_norm(x.double(), 1, norm.weight.double(), norm.bias.double(), 1e-12).numpy()
    assert np.abs(outputs - exact).max() / np.abs(exact).max() < 1e-5
