"""The evaluation job end to end: Ray Data scores equal a direct computation; MLflow, tags, the gate.

    .venv/bin/python -m pytest tests/test_evaluate.py -q

References: the registered model called directly on the store's label maps
(tests/synth_models.py), the segmenter called directly on those images and on the real
photos, the metrics of pipeline.evaluation.metrics on the result (themselves checked by
hand in test_evaluation_metrics.py), and torchmetrics' FrechetInceptionDistance fed the same
images with the same (random, written by the test) Inception weights. Real local Ray, a
real MLflow SQLite store and registry.
"""
from __future__ import annotations

import hashlib
import json
import os

import mlflow
import numpy as np
import pytest
import torch
from eval_fixtures import write_palette_segmenter, write_random_inception_weights
from mlflow.tracking import MlflowClient
from synth_models import make_test_checkpoint, reference_images
from worker_probes import recording_actor

from pipeline.data.schema import load_schema
from pipeline.data.store import decode_labels, decode_photos, label_column, open_store, photo_column
from pipeline.errors import UserError
from pipeline.evaluation import scoring
from pipeline.evaluation.config import parse_evaluate_config
from pipeline.evaluation.job import run
from pipeline.evaluation.metrics.diversity import class_diversity, diversity_score
from pipeline.evaluation.metrics.segmentation import confusion_matrix, segmentation_scores
from pipeline.evaluation.plan import make_plan
from pipeline.registry.models import log_and_register
from pipeline.runtime import CPU_WORKER_MALLOC_ENV, setup_mlflow
from pipeline.segmenter.file import Segmenter
from pipeline.synthesis.outputs import decode_png, image_path

RESOLUTION = "32x64"  # crn-tiny's top resolution
SPLIT = "val"  # 4 samples in conftest's toy store
MODEL_NAME = "crn-evaluate-test"
EXPERIMENT = "test-evaluate"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def inputs(toy_store, ray_session, tmp_path_factory):
    """A registered crn-tiny version, the palette segmenter, random Inception weights."""
    folder = tmp_path_factory.mktemp("evaluate")
    checkpoint = make_test_checkpoint(folder / "model.pt", seed=5)
    setup_mlflow(EXPERIMENT)
    with mlflow.start_run():
        version = log_and_register(checkpoint, MODEL_NAME)
    schema = load_schema("cityscapes")
    return {
        "store": str(toy_store), "checkpoint": checkpoint, "uri": f"models:/{MODEL_NAME}/{version}", "version": version,
        "segmenter": write_palette_segmenter(schema, folder / "palette.pt"),
        "inception": write_random_inception_weights(folder / "inception.pth"), "folder": folder, "schema": schema,
    }


def argv(inputs, *extra: str) -> list[str]:
    return ["--model", inputs["uri"], "--store", inputs["store"], "--split", SPLIT, "--segmenter",
            str(inputs["segmenter"]), "--fid-backend", "torchmetrics", "--fid-weights", str(inputs["inception"]),
            "--experiment", EXPERIMENT,
            "--synthesized", str(inputs["folder"] / "synthesized"), *extra]


@pytest.fixture(scope="module")
def evaluated(inputs):
    return run(parse_evaluate_config(argv(inputs, "--promote")))


def direct_scores(inputs) -> dict:
    """Every number computed without Ray: model, segmenter and metrics called by hand."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    table = open_store(inputs["store"]).read_table(SPLIT, RESOLUTION)
    labels = decode_labels(table.column(label_column(RESOLUTION)), RESOLUTION)
    photos = decode_photos(table.column(photo_column(RESOLUTION)), RESOLUTION)
    # The synthesis job's forward-pass settings: batches of 8, one CPU actor with every core.
    images = reference_images(inputs["checkpoint"], labels, batch_size=8, threads=os.cpu_count())  # [N, K, H, W, 3]
    segmenter = Segmenter(inputs["segmenter"].read_bytes(), 19)
    count, k = images.shape[:2]
    fake = images.reshape(-1, *images.shape[2:])
    fake_predictions = segmenter.predict(fake).reshape(count, k, *labels.shape[1:])
    synthesized = segmentation_scores(confusion_matrix(np.repeat(labels[:, None], k, axis=1), fake_predictions, 19))
    real = segmentation_scores(confusion_matrix(labels, segmenter.predict(photos), 19))
    values = [class_diversity(labels[i], images[i], 19) for i in range(count)]
    diversity, _ = diversity_score(sum(v for v, _ in values), sum(p.astype(int) for _, p in values))
    fid = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(inputs["inception"]))
    fid.update(torch.from_numpy(photos).permute(0, 3, 1, 2), real=True)
    fid.update(torch.from_numpy(fake).permute(0, 3, 1, 2), real=False)
    return {"miou": synthesized.miou, "pixel_accuracy": synthesized.pixel_accuracy, "real_miou": real.miou,
            "real_pixel_accuracy": real.pixel_accuracy, "miou_ratio": synthesized.miou / real.miou,
            "diversity": diversity, "fid": float(fid.compute()), "images": images, "table": table,
            "per_class_iou": synthesized.per_class_iou}


def test_scores_equal_a_direct_computation(inputs, evaluated):
    expected = direct_scores(inputs)
    # The images scored are the model's, called directly.
    for sample_id, sample_images in zip(expected["table"].column("sample_id").to_pylist(), expected["images"]):
        for k, image in enumerate(sample_images):
            np.testing.assert_array_equal(decode_png((inputs["folder"] / "synthesized" / image_path(sample_id, k))
                                                     .read_bytes()), image)
    got = evaluated.metrics
    for key in ("miou", "pixel_accuracy", "real_miou", "real_pixel_accuracy", "miou_ratio", "diversity"):
        assert got[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-12), key
    assert got["fid"] == pytest.approx(expected["fid"], rel=1e-4)
    assert 0 < got["miou"] < 1 and got["diversity"] > 0  # a model of random weights: far from perfect, K=2 differ
    assert "fid" not in evaluated.notes and not evaluated.reused_images


def test_mlflow_run_registry_tags_and_record(inputs, evaluated):
    client = MlflowClient()
    run_data = client.get_run(evaluated.run_id).data
    assert run_data.metrics["native/miou"] == pytest.approx(evaluated.metrics["miou"])  # per convention
    assert "miou" not in run_data.metrics and "native/fid" not in run_data.metrics  # FID is not, and logged once
    assert run_data.metrics["fid"] == pytest.approx(evaluated.metrics["fid"])
    assert run_data.tags["crn.protocol_id"] == evaluated.protocol_id
    assert run_data.params["native.split"] == SPLIT and run_data.params["native.num_samples"] == "4"
    artifacts = {a.path for a in client.list_artifacts(evaluated.run_id)}
    assert {"per_class", "grid.png", "evaluations"} <= artifacts
    table = json.loads(open(mlflow.artifacts.download_artifacts(run_id=evaluated.run_id,
                                                                 artifact_path="per_class/native.json")).read())
    assert table["columns"][:3] == ["class", "iou_synthesized", "iou_real"] and len(table["data"]) == 19
    # The version carries the scores and the protocol id, and links to the run.
    tags = client.get_model_version(MODEL_NAME, inputs["version"]).tags
    assert tags["crn.eval.protocol"] == evaluated.protocol_id and tags["crn.eval.run_id"] == evaluated.run_id
    assert json.loads(tags[f"crn.eval.{evaluated.protocol_id}"])["miou"] == pytest.approx(evaluated.metrics["miou"])
    # --promote with no champion yet: promoted, and said so.
    assert evaluated.gate.promoted and str(client.get_model_version_by_alias(MODEL_NAME, "champion").version) == inputs["version"]
    # The record beside the images, which the gallery lists.
    record = json.loads(open(evaluated.record_uri).read())
    assert record["protocol_id"] == evaluated.protocol_id and record["metrics"] == evaluated.metrics
    assert record == json.loads(open(mlflow.artifacts.download_artifacts(
        run_id=evaluated.run_id, artifact_path=f"evaluations/{evaluated.protocol_id}.json")).read())
    assert record["protocol"]["segmenter_sha256"] == record["segmenter"]["sha256"]


def test_rerun_reuses_the_images_and_gives_the_same_protocol_and_scores(inputs, evaluated, monkeypatch, tmp_path):
    # The scoring actor is also checked to start with the allocator settings of CPU workers.
    monkeypatch.setattr(scoring, "ScoringActor", recording_actor(scoring.ScoringActor, tmp_path, CPU_WORKER_MALLOC_ENV))
    again = run(parse_evaluate_config(argv(inputs, "--promote", "--fid-weights", "none")))
    assert [json.loads(p.read_text()) for p in tmp_path.glob("actor-*.json")] == [CPU_WORKER_MALLOC_ENV]
    assert again.reused_images
    assert again.notes["fid"] == "FID not computed: --fid-weights none" and again.metrics["fid"] is None
    assert again.protocol_id != evaluated.protocol_id  # no FID weights: another protocol
    for key in ("miou", "real_miou", "diversity"):
        assert again.metrics[key] == evaluated.metrics[key]
    assert again.gate.reason == f"version {inputs['version']} is already @champion"


def test_the_version_opened_is_the_one_synthesized_even_if_the_alias_moves(inputs, monkeypatch, tmp_path):
    """The evaluation opens the model once and hands that version to the synthesis it runs: an
    alias moved in between changes neither the images nor what they are labelled with."""
    from pipeline.evaluation import job

    client = MlflowClient()
    other = make_test_checkpoint(tmp_path / "other.pt", seed=6)
    with mlflow.start_run():
        other_version = log_and_register(other, MODEL_NAME, alias="moving")
    client.set_registered_model_alias(MODEL_NAME, "moving", inputs["version"])

    def move_the_alias(*args, **kwargs) -> bool:  # runs after the plan, before the synthesis
        client.set_registered_model_alias(MODEL_NAME, "moving", other_version)
        return False

    monkeypatch.setattr(job, "images_complete", move_the_alias)
    outcome = run(parse_evaluate_config(argv(inputs, "--model", f"models:/{MODEL_NAME}@moving", "--fid-weights", "none",
                                             "--synthesized", str(tmp_path / "synthesized"))))
    made = json.loads((tmp_path / "synthesized" / "job.json").read_text())
    assert made["model_version"] == inputs["version"] and outcome.model_uri == inputs["uri"]
    assert made["model_sha256"] == hashlib.sha256(inputs["checkpoint"].read_bytes()).hexdigest()
    assert str(client.get_model_version_by_alias(MODEL_NAME, "moving").version) == other_version


def test_mistakes_are_one_line_errors(inputs, tmp_path):
    swapped = inputs["schema"].class_names[:19]
    swapped[2], swapped[3] = swapped[3], swapped[2]
    (tmp_path / "classes.json").write_text(json.dumps(swapped))
    cases = [
        (["--segmenter-classes", str(tmp_path / "classes.json")], "class 2 is 'wall', schema 'cityscapes' has 'building'"),
        (["--split", "test"], "has no split 'test'"),
        (["--fid-weights", str(tmp_path / "none.pth")], "--fid-weights: no such file"),
    ]
    for extra, message in cases:
        with pytest.raises(UserError, match=message) as info:
            make_plan(parse_evaluate_config(argv(inputs, *extra)))
        assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="--promote needs a registered model"):
        run(parse_evaluate_config(argv(inputs, "--promote", "--model", str(inputs["checkpoint"]))))


def test_dry_run_prints_the_plan_and_its_protocol(inputs, evaluated, capsys):
    from jobs.evaluate import main

    assert main(argv(inputs, "--dry-run")) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["native.protocol_id"] == evaluated.protocol_id  # the same inputs: the same protocol, nothing computed
    assert plan["native.fid_weights_sha256"] and plan["segmenter.sha256"] == plan["native.segmenter_sha256"]
    assert plan["native.fid_backend"] == "torchmetrics" and plan["native.scales"] == [1.0]


def test_a_convention_whose_size_the_store_lacks_compares_with_labels_enlarged_by_nearest_neighbour(
        inputs, evaluated, monkeypatch):
    """32x64 images shown to the segmenter at 128x256, a size the toy store does not hold: the
    readings are compared with the 32x64 label maps enlarged x4 by nearest neighbour."""
    from pipeline.evaluation import conventions

    monkeypatch.setitem(conventions.CONVENTIONS, "wide", conventions.Convention("wide", "x4", segment_at="128x256"))
    outcome = run(parse_evaluate_config(argv(inputs, "--protocols", "native,wide", "--fid-weights", "none")))
    assert outcome.reused_images and outcome.protocols["native"].protocol_id != outcome.protocols["wide"].protocol_id
    record = json.loads(open(outcome.protocols["wide"].record_uri).read())
    assert record["protocol"]["scored_at"] == "128x256" and record["protocol"]["labels"] == "nearest"

    expected = direct_scores(inputs)
    labels = decode_labels(expected["table"].column(label_column(RESOLUTION)), RESOLUTION)
    images = expected["images"]
    enlarged = torch.nn.functional.interpolate(
        torch.from_numpy(images.reshape(-1, *images.shape[2:])).permute(0, 3, 1, 2).float() / 255.0,
        size=(128, 256), mode="bilinear", align_corners=False)
    segmenter = Segmenter(inputs["segmenter"].read_bytes(), 19)
    predictions = segmenter.module(enlarged).argmax(dim=1).numpy().reshape(len(images), 2, 128, 256)
    wide_labels = np.repeat(labels.repeat(4, axis=1).repeat(4, axis=2)[:, None], 2, axis=1)
    scores = segmentation_scores(confusion_matrix(wide_labels, predictions, 19))
    assert outcome.protocols["wide"].metrics["miou"] == pytest.approx(scores.miou, rel=1e-12)
    assert outcome.protocols["native"].metrics["miou"] == evaluated.metrics["miou"]
