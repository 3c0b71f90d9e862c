"""The demo end to end in a very short configuration: every stage runs, summary.json has every key.

    .venv/bin/python -m pytest tests/test_demo.py -q

What the real demo's numbers are (demo_miou_ratio >= 0.8 with the defaults) is measured by
running it (docs/benchmarks.md#the-demo); here a few training steps on a few scenes show that every
stage is wired to the next: the segmenter and the CRN are trained and registered, the gate
promotes the evaluated version, the champion's gallery lists the scores, and the summary
beside it holds them. Real local Ray, a real MLflow SQLite store.
"""
from __future__ import annotations

import json
import math

import pytest
from mlflow.tracking import MlflowClient

from jobs.demo import main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session", "one_torch_thread")]


def test_short_demo_writes_a_summary_with_every_key(tmp_path):
    out = tmp_path / "demo"
    assert main(["--out", str(out), "--preset", "crn-tiny", "--steps", "3", "--segmenter-steps", "20",
                 "--train-scenes", "8", "--val-scenes", "2", "--vgg-weights", "random", "--fid-weights", "none"]) == 0
    summaries = list(out.glob("synthesized/*/summary.json"))
    assert len(summaries) == 1
    summary = json.loads(summaries[0].read_text())
    for key in ("demo_miou_ratio", "demo_utility", "metrics", "notes", "stage_seconds", "champion", "gate", "protocol_id", "gallery"):
        assert key in summary, key
    # Every metric of the evaluation reaches the summary, without the demo naming them.
    from pipeline.evaluation.metrics import METRICS
    metrics = summary["metrics"]
    assert {"miou", "real_miou", "fid", "diversity"} <= set(metrics) and len(METRICS) == 3
    assert isinstance(summary["demo_miou_ratio"], float) and math.isfinite(summary["demo_miou_ratio"])
    assert summary["demo_miou_ratio"] == pytest.approx(metrics["miou"] / metrics["real_miou"])
    assert metrics["fid"] is None and summary["notes"]["fid"] == "FID not computed: --fid-weights none"
    assert set(summary["stage_seconds"]) == {"data", "segmenter", "train", "evaluate", "synthesize", "utility",
                                              "total"}
    assert all(seconds >= 0 for seconds in summary["stage_seconds"].values())

    # The gate made the evaluated version the champion (there was none), and the gallery shows the scores.
    assert summary["champion"] == summary["evaluated_model"]
    name, version = summary["champion"].removeprefix("models:/").split("/")
    client = MlflowClient()
    assert str(client.get_model_version_by_alias(name, "champion").version) == version
    assert client.get_model_version(name, version).tags["crn.eval.protocol"] == summary["protocol_id"]
    gallery = (summaries[0].parent / "gallery.html").read_text()
    assert f"scores (native, protocol {summary['protocol_id']})" in gallery and f"miou {metrics['miou']:.4g}" in gallery
    # The segmenter is a registered model too.
    seg_name, seg_version = summary["segmenter"].removeprefix("models:/").split("/")
    assert client.get_model_version(seg_name, seg_version).status == "READY"
    # The utility: the segmenter trained on the champion's images against stage 2's, reused, not retrained.
    utility_run = client.get_run(summary["utility_run"]).data
    assert utility_run.tags["segmenter.real.model"] == summary["segmenter"]
    assert summary["demo_utility"] == pytest.approx(utility_run.metrics["miou.synthesized"] / utility_run.metrics["miou.real"])
    assert client.get_model_version(name, version).tags["utility.utility"] == f"{summary['demo_utility']:.6g}"
