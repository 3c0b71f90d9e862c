"""Scores while training (`--eval-every`): the curve, the selected version, resume, a failing scorer.

    .venv/bin/python -m pytest tests/test_train_eval.py -q

crn-tiny with random VGG weights on the toy store, 4 steps, a checkpoint every 2, each
scored on the first 2 validation samples by the palette segmenter (tests/eval_fixtures.py).
References: the evaluation job's own path run separately on the same checkpoint files and
the same subset (the synthesis job, then the Ray Data scoring of pipeline.evaluation), the
run's metric history, and the registry.
"""
from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import mlflow
import pytest
import torch
from eval_fixtures import write_palette_segmenter
from faults import dying_once
from mlflow.tracking import MlflowClient

from pipeline.data.schema import load_schema
from pipeline.data.store import open_store
from pipeline.errors import UserError
from pipeline.evaluation.config import EvaluateConfig
from pipeline.evaluation.job import results
from pipeline.evaluation.plan import make_plan as evaluation_plan
from pipeline.evaluation.scoring import score
from pipeline.registry.models import open_model
from pipeline.segmenter.file import save_torchscript
from pipeline.synthesis import job as synthesis_job
from pipeline.synthesis.config import SynthesizeConfig
from pipeline.training import job as train
from pipeline.training.config import parse_train_config
from pipeline.training.loop import CHECKPOINT_FILE

EXPERIMENT = "test-train-eval"
SAMPLES = 2

pytestmark = pytest.mark.usefixtures("one_torch_thread", "module_experiment")


class BrokenSegmenter(torch.nn.Module):
    """Opens and names its classes like any segmenter; fails on its first image."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("broken segmenter: no scores from this one")


@pytest.fixture(scope="module")
def segmenters(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train-eval")
    schema = load_schema("cityscapes")
    names = schema.class_names[: schema.void_index]
    return {"palette": str(write_palette_segmenter(schema, folder / "palette.pt")),
            "broken": str(save_torchscript(BrokenSegmenter(), names, folder / "broken.pt"))}


def argv(store, run_name: str, model_name: str, segmenter: str, *extra: str) -> list[str]:
    return ["--store", str(store), "--preset", "crn-tiny", "--num-outputs", "2", "--vgg-weights", "random",
            "--threads-per-worker", "1", "--run-name", run_name, "--experiment", EXPERIMENT, "--image-every", "0",
            "--steps", "4", "--checkpoint-every", "2", "--log-every", "2", "--keep-checkpoints", "5",
            "--model-name", model_name, "--eval-every", "2", "--eval-segmenter", segmenter,
            "--eval-samples", str(SAMPLES), *extra]


def history(run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in MlflowClient().get_metric_history(run_id, key))


def reference_scores(store: str, checkpoint: Path, segmenter: str, folder: Path) -> tuple[dict[str, float], str]:
    """jobs/evaluate.py's path on one checkpoint file and the same subset: the synthesis job
    (one thread, as the scoring task), then the Ray Data scoring."""
    subset = open_store(store).sample_ids("val")[:SAMPLES]
    model = open_model(str(checkpoint))
    synthesis_job.run(SynthesizeConfig(model=str(checkpoint), output=str(folder), store=store, split="val",
                                       threads_per_actor=1, experiment=EXPERIMENT), model=model)
    config = EvaluateConfig(model=str(checkpoint), store=store, segmenter=segmenter, fid_weights="none",
                            synthesized=str(folder), threads_per_actor=1, experiment=EXPERIMENT)
    plan = evaluation_plan(config, model=model, sample_ids=subset)
    outcomes, _ = results(plan, score(plan))
    values = {key: value for key, value in outcomes[plan.primary.name].values.items() if value is not None}
    return values, plan.primary.protocol.id


def test_scores_selection_and_resume(toy_store, ray_session, segmenters, tmp_path):
    run_name, model_name = f"eval-{uuid.uuid4().hex[:8]}", f"crn-eval-{uuid.uuid4().hex[:8]}"
    command = argv(toy_store, run_name, model_name, segmenters["palette"], "--select-by", "miou")
    outcome = train.run(parse_train_config(command))
    run = mlflow.get_run(outcome.run_id)
    miou = history(outcome.run_id, "eval.miou")
    assert [step for step, _ in miou] == [2, 4]
    assert not any(key.startswith("crn.eval_error") for key in run.data.tags)

    # The curve is the evaluation job's numbers for the checkpoint of each step.
    run_dir = Path(run.data.params["run_dir"])
    for step, _ in miou:
        checkpoint = run_dir / f"checkpoint_{step:08d}" / CHECKPOINT_FILE
        expected, protocol_id = reference_scores(str(toy_store), checkpoint, segmenters["palette"],
                                                 tmp_path / f"step{step}")
        assert run.data.tags["crn.eval_protocol_id"] == protocol_id
        for key, value in expected.items():
            logged = dict(history(outcome.run_id, f"eval.{key}"))
            assert logged[step] == pytest.approx(value, abs=1e-9), (step, key)

    # The registered version is the best checkpoint by eval.miou (ties: the earliest).
    best_step = max(sorted(dict(miou)), key=lambda step: dict(miou)[step])
    version = MlflowClient().get_model_version(model_name, outcome.model_version)
    assert version.tags["crn.selected_step"] == str(best_step)
    assert version.tags["crn.selected_by"] == "eval.miou"
    best_file = run_dir / f"checkpoint_{best_step:08d}" / CHECKPOINT_FILE
    assert open_model(f"models:/{model_name}/{outcome.model_version}").sha256 == \
        hashlib.sha256(best_file.read_bytes()).hexdigest()
    kept = sorted(p.name for p in (run_dir / "scored").iterdir())
    assert kept == [f"checkpoint_{best_step:08d}.pt"]  # copies that lost were deleted

    # The same command again: the scores stay as they were, no step scored twice, the same version.
    again = train.run(parse_train_config(command))
    assert again.run_id == outcome.run_id and again.model_version == outcome.model_version
    assert history(outcome.run_id, "eval.miou") == miou


def test_a_killed_worker_keeps_the_curve_without_duplicates(toy_store, ray_session, segmenters, tmp_path):
    """Rank 0 dies right after reporting step 4, whose checkpoint is then being scored; the group
    restarts from it and takes steps 5 and 6. Every checkpoint is scored once: 2, 4, 6."""
    run_name, model_name = f"eval-killed-{uuid.uuid4().hex[:8]}", f"crn-eval-{uuid.uuid4().hex[:8]}"
    command = argv(toy_store, run_name, model_name, segmenters["palette"], "--steps", "6", "--max-failures", "1")
    outcome = train.run(parse_train_config(command), dying_once(tmp_path / "died", after_step=4, rank=0))
    assert (tmp_path / "died").exists() and outcome.final["resumed_from_step"] == 4
    tags = mlflow.get_run(outcome.run_id).data.tags
    assert tags["crn.worker_failures"] == "1"
    for key in ("eval.miou", "eval.pixel_accuracy"):
        assert [step for step, _ in history(outcome.run_id, key)] == [2, 4, 6], key


def test_failing_scorer_leaves_training_finished(toy_store, ray_session, segmenters):
    run_name, model_name = f"eval-broken-{uuid.uuid4().hex[:8]}", f"crn-eval-{uuid.uuid4().hex[:8]}"
    outcome = train.run(parse_train_config(argv(toy_store, run_name, model_name, segmenters["broken"])))
    assert outcome.final["step"] == 4 and outcome.model_version
    tags = mlflow.get_run(outcome.run_id).data.tags
    for step in (2, 4):
        assert "broken segmenter" in tags[f"crn.eval_error.{step}"]
    assert history(outcome.run_id, "eval.miou") == []


@pytest.mark.parametrize("extra, message", [
    (["--eval-every", "3", "--checkpoint-every", "2", "--eval-segmenter", "s.pt"], "multiple of --checkpoint-every"),
    (["--eval-every", "2", "--checkpoint-every", "2"], "needs --eval-segmenter"),
    (["--select-by", "miou"], "needs scores"),
    (["--eval-every", "2", "--checkpoint-every", "2", "--eval-segmenter", "s.pt", "--select-by", "fid"],
     "needs --eval-fid-weights"),
])
def test_flags_that_contradict_each_other(extra, message):
    with pytest.raises(UserError, match=message):
        parse_train_config(["--store", "work/store", *extra])
