"""The MLflow model registry round trip: register a checkpoint, load it back by alias and version.

    .venv/bin/python -m pytest tests/test_model_registry.py -q

Reference: the checkpoint file the registered model came from, loaded directly with
crn.checkpoint. A real MLflow SQLite store (MLFLOW_TRACKING_URI from conftest.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image
from synth_models import TEST_NUM_OUTPUTS, make_test_checkpoint, reference_images

from crn.inference import generate_images
from pipeline.errors import UserError
from pipeline.registry.models import log_and_register, open_model
from pipeline.runtime import setup_mlflow

REPO = Path(__file__).resolve().parent.parent
HEIGHT, WIDTH = 32, 64  # crn-tiny's top resolution


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """Two versions of one registered model: v1 from seed 1, v2 from seed 2 (alias champion)."""
    folder = tmp_path_factory.mktemp("registry")
    paths = [make_test_checkpoint(folder / f"seed{seed}.pt", seed=seed) for seed in (1, 2)]
    setup_mlflow("test-model-registry")
    versions = []
    for path, alias in zip(paths, ("candidate", "champion")):
        with mlflow.start_run():
            versions.append(log_and_register(path, "crn-registry-test", alias=alias))
    return paths, versions


def label_maps(seed: int, count: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 20, size=(count, HEIGHT, WIDTH), dtype=np.uint8)


def direct_images(checkpoint_path, labels: np.ndarray) -> np.ndarray:
    """The reference: the checkpoint's model called by hand, clamped and rounded."""
    return reference_images(checkpoint_path, labels)


def test_versions_and_aliases_are_registered(registered):
    _, versions = registered
    assert versions == ["1", "2"]
    client = MlflowClient()
    assert str(client.get_model_version_by_alias("crn-registry-test", "candidate").version) == "1"
    assert str(client.get_model_version_by_alias("crn-registry-test", "champion").version) == "2"


@pytest.mark.parametrize("uri, expected_index, expected_version", [
    ("models:/crn-registry-test@champion", 1, "2"),
    ("models:/crn-registry-test@candidate", 0, "1"),
    ("models:/crn-registry-test/1", 0, "1"),
])
def test_registered_model_loads_and_matches_its_checkpoint(registered, uri, expected_index, expected_version):
    paths, _ = registered
    loaded = open_model(uri)
    assert loaded.uri == uri and loaded.version == expected_version
    assert "model" not in loaded.description and "optimizer" not in loaded.description
    assert loaded.description["label_schema"]["name"] == "cityscapes"
    assert not loaded.build().training
    labels = label_maps(seed=7)
    images = generate_images(loaded.build(), labels)
    assert images.shape == (3, TEST_NUM_OUTPUTS, HEIGHT, WIDTH, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, direct_images(paths[expected_index], labels))
    # The two versions are different models: the comparison above can tell them apart.
    other = direct_images(paths[1 - expected_index], labels)
    assert not np.array_equal(images, other)


def test_checkpoint_path_loads_without_registry(registered):
    paths, _ = registered
    loaded = open_model(str(paths[0]))
    assert loaded.version is None and loaded.uri == str(paths[0])
    labels = label_maps(seed=8)
    np.testing.assert_array_equal(generate_images(loaded.build(), labels), direct_images(paths[0], labels))


def test_pyfunc_predict_matches_the_checkpoint(registered):
    paths, _ = registered
    pyfunc = mlflow.pyfunc.load_model("models:/crn-registry-test@champion")
    labels = label_maps(seed=9, count=2)
    np.testing.assert_array_equal(np.asarray(pyfunc.predict(labels)), direct_images(paths[1], labels))


def test_runs_uri_loads_the_logged_model(registered):
    version = MlflowClient().get_model_version("crn-registry-test", "1")
    loaded = open_model(f"runs:/{version.run_id}/model")
    paths, _ = registered
    labels = label_maps(seed=10, count=1)
    np.testing.assert_array_equal(generate_images(loaded.build(), labels), direct_images(paths[0], labels))


def test_checkpoint_on_s3_loads(registered, s3_endpoint):
    import boto3

    paths, _ = registered
    boto3.client("s3", endpoint_url=s3_endpoint).upload_file(str(paths[1]), "test-bucket", "models/seed2.pt")
    loaded = open_model("s3://test-bucket/models/seed2.pt")
    assert loaded.uri == "s3://test-bucket/models/seed2.pt" and loaded.version is None
    labels = label_maps(seed=11, count=2)
    np.testing.assert_array_equal(generate_images(loaded.build(), labels), direct_images(paths[1], labels))


@pytest.mark.parametrize("uri, message", [
    ("models:/crn-registry-test@nonexistent", "models:/crn-registry-test@nonexistent"),
    ("models:/no-such-model/1", "models:/no-such-model/1"),
    ("/no/such/checkpoint.pt", "/no/such/checkpoint.pt: no such file"),
    ("runs:/0123456789abcdef0123456789abcdef/model", "runs:/0123456789abcdef0123456789abcdef/model: cannot download"),
])
def test_bad_model_uris_give_one_line_errors(registered, uri, message):
    with pytest.raises(UserError) as info:
        open_model(uri)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_log_and_register_needs_an_active_run(tmp_path):
    path = make_test_checkpoint(tmp_path / "c.pt", seed=3)
    assert mlflow.active_run() is None
    with pytest.raises(UserError, match="active MLflow run"):
        log_and_register(path, "crn-registry-test")


def test_a_fresh_process_finds_a_registered_model_without_any_mlflow_setting(tmp_path):
    """As a new user would: train registered a model into the work folder's store; then
    `synthesize.py --model models:/...` from another folder, MLFLOW_TRACKING_URI unset. The
    model resolves from the work folder's store, and nothing is written where the command ran."""
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(CRN_WORK_DIR=str(work), PYTHONPATH=str(REPO))
    checkpoint = make_test_checkpoint(tmp_path / "model.pt", seed=3)
    (tmp_path / "labels").mkdir()
    Image.fromarray(np.full((HEIGHT, WIDTH), 7, np.uint8)).save(tmp_path / "labels" / "road.png")
    register = ("import mlflow; from pipeline.registry.models import log_and_register; "
                "from pipeline.runtime import setup_mlflow; setup_mlflow('fresh-process'); run = mlflow.start_run(); "
                f"print(log_and_register({str(checkpoint)!r}, 'crn-fresh', alias='candidate')); mlflow.end_run()")
    registered = subprocess.run([sys.executable, "-c", register], env=env, cwd=elsewhere, capture_output=True,
                                text=True, timeout=600)
    assert registered.returncode == 0, registered.stderr[-2000:]
    dry_run = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "synthesize.py"), "--model", "models:/crn-fresh@candidate",
         "--labels", str(tmp_path / "labels"), "--output", str(tmp_path / "out"), "--dry-run"],
        env=env, cwd=elsewhere, capture_output=True, text=True, timeout=600)
    assert dry_run.returncode == 0, dry_run.stderr[-2000:]
    assert json.loads(dry_run.stdout)["model.version"] == "1"
    assert list(elsewhere.iterdir()) == [], "a job wrote into the folder it was started from"
    assert (work / "mlflow.db").is_file()
