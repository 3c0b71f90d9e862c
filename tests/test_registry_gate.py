"""The registry gate: @champion moves only to a better version under the same protocol; by hand, recorded.

    .venv/bin/python -m pytest tests/test_registry_gate.py -q

A real MLflow SQLite registry (MLFLOW_TRACKING_URI from conftest.py) with real registered
CRN versions (tests/synth_models.py); evaluations are recorded with chosen scores, so each
case of the rule is shown with numbers whose order is known.
"""
from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient
from synth_models import make_test_checkpoint

from jobs.promote import main as promote_main
from pipeline.errors import UserError
from pipeline.registry import gate
from pipeline.runtime import setup_mlflow

PROTOCOL, OTHER_PROTOCOL = "p" * 16, "q" * 16


def register_versions(tmp_path, name: str, count: int) -> list[str]:
    """`count` versions of a registered model. The gate reads only the registry's versions,
    aliases and tags, so each version points at a checkpoint file without logging a model."""
    setup_mlflow("test-registry-gate")
    client = MlflowClient()
    client.create_registered_model(name)
    return [str(client.create_model_version(name, source=str(make_test_checkpoint(tmp_path / f"{seed}.pt", seed=seed)))
                .version) for seed in range(count)]


def evaluate(name: str, version: str, miou: float, protocol: str = PROTOCOL) -> None:
    gate.record_evaluation(name, version, protocol, {"miou": miou, "pixel_accuracy": 0.5, "fid": None}, run_id=f"run{version}")


def tags(name: str, version: str) -> dict:
    return MlflowClient().get_model_version(name, version).tags


def test_promotion_when_better_not_when_worse_or_equal(tmp_path):
    name = "crn-gate-order"
    v1, v2, v3, v4 = register_versions(tmp_path, name, 4)
    evaluate(name, v1, 0.40)
    first = gate.promote_if_better(name, v1, PROTOCOL)
    assert first.promoted and gate.current_champion(name) == v1 and "there was none" in first.reason

    evaluate(name, v2, 0.35)  # worse: stays
    worse = gate.promote_if_better(name, v2, PROTOCOL)
    assert not worse.promoted and gate.current_champion(name) == v1
    assert "0.3500 <= 0.4000" in worse.reason

    evaluate(name, v3, 0.40)  # equal: not better, stays
    assert not gate.promote_if_better(name, v3, PROTOCOL).promoted and gate.current_champion(name) == v1

    evaluate(name, v4, 0.52)  # better: moves
    better = gate.promote_if_better(name, v4, PROTOCOL)
    assert better.promoted and gate.current_champion(name) == v4
    assert better.champion_before == v1 and "0.5200 > 0.4000" in better.reason

    # Each comparison is recorded on both versions.
    on_v4 = json.loads(tags(name, v4)[f"crn.gate.vs_v{v1}"])
    on_v1 = json.loads(tags(name, v1)[f"crn.gate.vs_v{v4}"])
    assert on_v4 == on_v1
    assert on_v4["promoted"] and on_v4["candidate_value"] == 0.52 and on_v4["champion_value"] == 0.40
    assert on_v4["protocol"] == PROTOCOL and on_v4["candidate_run"] == f"run{v4}"
    assert not json.loads(tags(name, v1)[f"crn.gate.vs_v{v2}"])["promoted"]
    assert tags(name, v2)["crn.gate.decision"].startswith("not promoted")
    # The evaluation itself is on the version: per protocol, and as the latest.
    assert json.loads(tags(name, v4)[f"crn.eval.{PROTOCOL}"]) == {"miou": 0.52, "pixel_accuracy": 0.5, "fid": None,
                                                                 "run_id": f"run{v4}"}
    assert tags(name, v4)["crn.eval.protocol"] == PROTOCOL and tags(name, v4)["crn.eval.miou"] == "0.52"


def test_never_across_protocol_ids(tmp_path):
    name = "crn-gate-protocols"
    v1, v2 = register_versions(tmp_path, name, 2)
    evaluate(name, v1, 0.10, protocol=OTHER_PROTOCOL)
    gate.promote_if_better(name, v1, OTHER_PROTOCOL)
    assert gate.current_champion(name) == v1
    evaluate(name, v2, 0.90)  # far better, but under another protocol than the champion's numbers
    decision = gate.promote_if_better(name, v2, PROTOCOL)
    assert not decision.promoted and gate.current_champion(name) == v1
    assert f"champion version {v1} has no evaluation under protocol {PROTOCOL}" in decision.reason
    assert f"models:/{name}/{v1}" in decision.reason
    # Once the champion is evaluated under the same protocol, the numbers are compared.
    evaluate(name, v1, 0.10)
    assert gate.promote_if_better(name, v2, PROTOCOL).promoted and gate.current_champion(name) == v2


def test_a_version_without_that_evaluation_cannot_pass(tmp_path):
    name = "crn-gate-unevaluated"
    (v1,) = register_versions(tmp_path, name, 1)
    with pytest.raises(UserError, match=f"has no evaluation under protocol {PROTOCOL}"):
        gate.promote_if_better(name, v1, PROTOCOL)
    assert gate.current_champion(name) is None


def test_promote_and_demote_by_hand_are_recorded(tmp_path):
    name = "crn-gate-by-hand"
    v1, v2 = register_versions(tmp_path, name, 2)
    assert promote_main(["--model", name, "--version", v1, "--reason", "first release"]) == 0
    assert gate.current_champion(name) == v1
    assert promote_main(["--model", name, "--version", v2, "--reason", "user study"]) == 0
    assert gate.current_champion(name) == v2
    on_v2 = json.loads(tags(name, v2)["crn.gate.manual"])
    assert on_v2["previous_champion"] == v1 and on_v2["reason"] == "user study"
    assert "replaced as @champion by version 2" in json.loads(tags(name, v1)["crn.gate.manual"])["action"]

    with pytest.raises(UserError, match="is not @champion"):
        promote_main(["--model", name, "--version", v1, "--demote", "--reason", "x"])
    assert promote_main(["--model", name, "--version", v2, "--demote", "--reason", "night scenes"]) == 0
    assert gate.current_champion(name) is None
    assert json.loads(tags(name, v2)["crn.gate.manual"])["action"] == "demoted from @champion by hand"

    with pytest.raises(UserError, match="--reason"):
        promote_main(["--model", name, "--version", v1, "--reason", " "])
    with pytest.raises(UserError, match=f"models:/{name}/9"):
        promote_main(["--model", name, "--version", "9", "--reason", "typo"])
