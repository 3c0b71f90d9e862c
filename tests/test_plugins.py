"""A generator and a metric added as plug-ins reach every stage untouched.

    .venv/bin/python -m pytest tests/test_plugins.py -q

- A toy generator of another kind than the CRN, registered by one line
  (tests/plugin_fixtures.py), is written to a checkpoint, synthesized by the real job on the
  session's Ray instance, and its images equal a direct call of the network.
- Old checkpoints without a "generator" entry still open as CRNs.
- A metric appended to `pipeline.evaluation.metrics.METRICS` is computed by the scoring
  actors and reaches the MLflow run, the record and the model version's tags.
"""
from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
import torch
from eval_fixtures import write_palette_segmenter
from mlflow.tracking import MlflowClient
from plugin_fixtures import MeanBrightness, ToyConfig, ToyGenerator, register_toy_generator
from synth_models import make_test_checkpoint

from crn.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from crn.inference import generate_images
from crn.model import CRN
from pipeline.data.schema import load_schema
from pipeline.data.store import decode_labels, label_column, open_store
from pipeline.evaluation import metrics as evaluation_metrics
from pipeline.evaluation.config import EvaluateConfig
from pipeline.evaluation.job import run as evaluate
from pipeline.registry.models import log_and_register, open_model
from pipeline.runtime import setup_mlflow
from pipeline.synthesis.config import SynthesizeConfig
from pipeline.synthesis.job import run as synthesize
from pipeline.synthesis.outputs import decode_png, image_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RESOLUTION = "32x64"


def test_a_registered_toy_generator_is_synthesized_by_the_real_job(toy_store, ray_session, tmp_path):
    register_toy_generator()
    schema = load_schema("cityscapes")
    torch.manual_seed(3)
    network = ToyGenerator(ToyConfig(num_classes=schema.num_classes, num_outputs=2, height=32, width=64)).eval()
    path = tmp_path / "toy.pt"
    save_checkpoint(path, make_checkpoint(network, optimizer=None, step=0, epoch=0, loss_weights=[1.0] * 6,
                                          label_schema=schema.to_dict()))
    assert load_checkpoint(path)["generator"] == "toy"

    outcome = synthesize(SynthesizeConfig(model=str(path), store=str(toy_store), split="val",
                                          output=str(tmp_path / "out"), batch_size=2))
    table = open_store(toy_store).read_table("val", RESOLUTION)
    labels = decode_labels(table.column(label_column(RESOLUTION)), RESOLUTION)
    expected = generate_images(network, labels, batch_size=2)
    assert outcome.num_images == len(labels) * 2
    for n, sample_id in enumerate(table.column("sample_id").to_pylist()):
        for k in range(2):
            image = decode_png((tmp_path / "out" / image_path(sample_id, k)).read_bytes())
            np.testing.assert_array_equal(image, expected[n, k])


def test_a_checkpoint_without_a_generator_entry_opens_as_a_crn(tmp_path):
    path = make_test_checkpoint(tmp_path / "crn.pt")
    ckpt = load_checkpoint(path)
    assert ckpt.pop("generator") == "crn"  # written by this code; older files lack it
    torch.save(ckpt, tmp_path / "old.pt")
    model = open_model(str(tmp_path / "old.pt"))
    assert model.generator.name == "crn" and isinstance(model.build(), CRN)


def test_an_appended_metric_reaches_the_run_the_record_and_the_version(toy_store, ray_session, tmp_path, monkeypatch):
    monkeypatch.setattr(evaluation_metrics, "METRICS", [*evaluation_metrics.METRICS, MeanBrightness])
    checkpoint = make_test_checkpoint(tmp_path / "model.pt", seed=4)
    setup_mlflow("test-plugins")
    with mlflow.start_run():
        version = log_and_register(checkpoint, "crn-plugin-metric")
    outcome = evaluate(EvaluateConfig(
        model=f"models:/crn-plugin-metric/{version}", store=str(toy_store), split="val",
        segmenter=str(write_palette_segmenter(load_schema("cityscapes"), tmp_path / "palette.pt")),
        fid_weights="none", synthesized=str(tmp_path / "synthesized"), experiment="test-plugins"))

    images = np.stack([decode_png((tmp_path / "synthesized" / image_path(s, k)).read_bytes())
                       for s in open_store(toy_store).sample_ids("val") for k in range(2)])
    assert outcome.metrics["brightness"] == pytest.approx(images.mean() / 255.0, rel=1e-12)
    assert MlflowClient().get_run(outcome.run_id).data.metrics["brightness"] == pytest.approx(outcome.metrics["brightness"])
    assert json.load(open(outcome.record_uri))["metrics"]["brightness"] == outcome.metrics["brightness"]
    tags = MlflowClient().get_model_version("crn-plugin-metric", version).tags
    assert json.loads(tags[f"crn.eval.{outcome.protocol_id}"])["brightness"] == pytest.approx(outcome.metrics["brightness"])
