"""The segmenter job: Ray Train on a store's photos, a TorchScript file with its class order, MLflow.

    .venv/bin/python -m pytest tests/test_train_segmenter.py -q

Reference: the registered file loaded back and run by hand on the store's val photos must
give the scores the run logged; the MLflow run of an earlier attempt, started by the function
the CRN's training uses (pipeline.trainer), must be the one a re-run logs into. Real local Ray
(Ray Train), a real MLflow SQLite store and registry.
"""
from __future__ import annotations

import json

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from jobs.train_segmenter import main
from pipeline.data.store import decode_labels, decode_photos, label_column, open_store, photo_column
from pipeline.errors import UserError
from pipeline.evaluation.metrics.segmentation import confusion_matrix, segmentation_scores
from pipeline.segmenter.config import parse_segmenter_config, resolve
from pipeline.segmenter.file import Segmenter, check_class_order, open_segmenter
from pipeline.segmenter.job import run
from pipeline.trainer import run_dir, start_or_resume_run

RESOLUTION = "32x64"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_trained_segmenter_is_registered_with_its_class_order_and_scores(toy_store, ray_session, tmp_path):
    argv = ["--store", str(toy_store), "--resolution", RESOLUTION, "--steps", "6", "--batch-size", "4",
            "--log-every", "2", "--checkpoint-every", "4", "--storage-path", str(tmp_path / "runs"),
            "--model-name", "seg-test", "--experiment", "test-train-segmenter"]
    outcome = run(parse_segmenter_config(argv))
    assert outcome.uri == "models:/seg-test/1"
    client = MlflowClient()
    assert str(client.get_model_version_by_alias("seg-test", "current").version) == "1"
    run_data = client.get_run(outcome.run_id).data
    assert [m.step for m in client.get_metric_history(outcome.run_id, "loss")] == [1, 2, 3, 4, 5, 6]
    assert {"steps_per_s", "samples_per_s"} <= set(run_data.metrics), "the workers' reports reach the run"

    segmenter_file = open_segmenter(outcome.uri)  # downloaded from the registry
    store = open_store(toy_store)
    check_class_order(segmenter_file, store.schema)
    table = store.read_table("val", RESOLUTION)
    labels = decode_labels(table.column(label_column(RESOLUTION)), RESOLUTION)
    photos = decode_photos(table.column(photo_column(RESOLUTION)), RESOLUTION)
    scores = segmentation_scores(confusion_matrix(labels, Segmenter(segmenter_file.data, 19).predict(photos), 19))
    assert run_data.metrics["val_miou"] == pytest.approx(scores.miou) == pytest.approx(outcome.val_miou)
    assert run_data.metrics["val_pixel_accuracy"] == pytest.approx(scores.pixel_accuracy)


def test_dry_run_and_too_few_samples_for_a_batch(toy_store, capsys):
    assert main(["--store", str(toy_store), "--dry-run"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["resolution"] == "64x128"  # the store's top resolution
    assert resolved["model_name"].startswith("seg-") and resolved["model_name"].endswith("-64x128")
    with pytest.raises(UserError, match="has 8 train samples, fewer than --batch-size 16 x --num-workers 1"):
        main(["--store", str(toy_store), "--batch-size", "16", "--dry-run"])


def test_a_rerun_logs_into_the_mlflow_run_of_the_earlier_attempt(toy_store, ray_session, tmp_path):
    argv = ["--store", str(toy_store), "--resolution", RESOLUTION, "--steps", "4", "--batch-size", "4",
            "--log-every", "2", "--checkpoint-every", "4", "--storage-path", str(tmp_path / "runs"),
            "--model-name", "seg-test-resumed", "--experiment", "test-train-segmenter"]
    config = resolve(parse_segmenter_config(argv))
    # An attempt that stopped before its first checkpoint: its MLflow run, started as every
    # training starts one, with its first two steps logged.
    earlier, resumed, _ = start_or_resume_run(config.experiment, run_dir(config), config.run_name, "stopped")
    with earlier:
        assert not resumed
        for step in (1, 2):
            mlflow.log_metric("loss", 99.0, step=step)

    outcome = run(parse_segmenter_config(argv))
    assert outcome.run_id == earlier.info.run_id
    history = MlflowClient().get_metric_history(outcome.run_id, "loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4], "each step once, the earlier attempt's kept"
    assert [m.value for m in history if m.step <= 2] == [99.0, 99.0]

    again = run(parse_segmenter_config(argv))  # a finished run: the same MLflow run and version
    assert (again.run_id, again.model_version) == (outcome.run_id, outcome.model_version) == (earlier.info.run_id, "1")
