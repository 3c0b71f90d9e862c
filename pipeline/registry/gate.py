"""The registry gate: which model version holds the alias `champion`, and the record of why.

Evaluations (pipeline.evaluation.job) write their numbers onto the model version they
scored, as tags, one set per protocol (pipeline.evaluation.protocol):

    crn.eval.<protocol id>   JSON {"miou": .., "pixel_accuracy": .., "fid": .., "diversity": .., "run_id": ..}
    crn.eval.protocol, crn.eval.run_id, crn.eval.<metric>   the latest evaluation, for people and the UI

`promote_if_better` (the evaluation's `--promote`) moves `champion` to a version only if its
mIoU on synthesized images (GATE_METRIC) is strictly higher than the champion's under the
same protocol id, or if there is no champion. A champion never evaluated under that
protocol is not compared at all (numbers from another segmenter, split or resolution mean
something else): the candidate is not promoted, and the message says what to evaluate.
Each comparison is recorded on both versions (`crn.gate.vs_v<other>`, JSON), and the
candidate gets `crn.gate.decision`.

`set_champion_by_hand` and `demote_by_hand` (jobs/promote.py) move the alias without a
comparison; they record who-did-what as `crn.gate.manual` on the versions involved.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

from pipeline.errors import UserError, first_line

CHAMPION = "champion"
GATE_METRIC = "miou"  # mIoU of the segmenter on synthesized images: higher is better
EVAL_TAG = "crn.eval."


@dataclass
class GateDecision:
    promoted: bool
    champion_before: str | None  # the version that held the alias before
    champion_after: str | None
    reason: str  # one line


def _client():
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def current_champion(model_name: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(_client().get_model_version_by_alias(model_name, CHAMPION).version)
    except MlflowException:
        return None  # no such alias (or no such model)


def evaluation_of(model_name: str, version: str, protocol_id: str) -> dict | None:
    """The version's recorded scores under `protocol_id`, or None if never evaluated so."""
    tags = _client().get_model_version(model_name, version).tags
    text = tags.get(f"{EVAL_TAG}{protocol_id}")
    return json.loads(text) if text else None


def record_evaluation(model_name: str, version: str, protocol_id: str, metrics: dict, run_id: str) -> None:
    """Write an evaluation's numbers onto the model version (module docstring)."""
    client = _client()
    record = {**metrics, "run_id": run_id}
    client.set_model_version_tag(model_name, version, f"{EVAL_TAG}{protocol_id}", json.dumps(record, sort_keys=True))
    client.set_model_version_tag(model_name, version, f"{EVAL_TAG}protocol", protocol_id)
    client.set_model_version_tag(model_name, version, f"{EVAL_TAG}run_id", run_id)
    for key, value in metrics.items():
        client.set_model_version_tag(model_name, version, f"{EVAL_TAG}{key}", "" if value is None else f"{value:.6g}")


def promote_if_better(model_name: str, version: str, protocol_id: str) -> GateDecision:
    """The gate (module docstring). `version` must carry an evaluation under `protocol_id`."""
    candidate = evaluation_of(model_name, version, protocol_id)
    if candidate is None:
        raise UserError(f"models:/{model_name}/{version} has no evaluation under protocol {protocol_id}")
    champion = current_champion(model_name)
    if champion == version:
        return GateDecision(False, champion, champion, f"version {version} is already @{CHAMPION}")
    if champion is None:
        _set_champion(model_name, version)
        decision = GateDecision(True, None, version, f"version {version} is @{CHAMPION}: there was none")
        _record(model_name, version, None, protocol_id, candidate, None, decision)
        return decision
    held = evaluation_of(model_name, champion, protocol_id)
    if held is None:
        decision = GateDecision(False, champion, champion,
                                f"not promoted: champion version {champion} has no evaluation under protocol "
                                f"{protocol_id} (evaluate models:/{model_name}/{champion} with the same store, split, "
                                f"segmenter and FID weights, then run this again); scores under different protocols "
                                f"are never compared")
        _record(model_name, version, champion, protocol_id, candidate, None, decision)
        return decision
    mine, theirs = candidate[GATE_METRIC], held[GATE_METRIC]
    if mine > theirs:
        _set_champion(model_name, version)
        decision = GateDecision(True, champion, version, f"version {version} is @{CHAMPION}: {GATE_METRIC} {mine:.4f} > "
                                                         f"{theirs:.4f} of version {champion} (protocol {protocol_id})")
    else:
        decision = GateDecision(False, champion, champion, f"not promoted: {GATE_METRIC} {mine:.4f} <= {theirs:.4f} of "
                                                           f"champion version {champion} (protocol {protocol_id})")
    _record(model_name, version, champion, protocol_id, candidate, held, decision)
    return decision


def set_champion_by_hand(model_name: str, version: str, reason: str) -> GateDecision:
    """Move `champion` to `version` without a comparison; recorded on both versions."""
    _check_version(model_name, version)
    before = current_champion(model_name)
    _set_champion(model_name, version)
    note = {"action": f"made @{CHAMPION} by hand", "previous_champion": before, "reason": reason, "time": _now()}
    _client().set_model_version_tag(model_name, version, "crn.gate.manual", json.dumps(note))
    if before and before != version:
        _client().set_model_version_tag(model_name, before, "crn.gate.manual", json.dumps(
            {"action": f"replaced as @{CHAMPION} by version {version} by hand", "reason": reason, "time": _now()}))
    return GateDecision(True, before, version, f"version {version} is @{CHAMPION} (by hand; was {before or 'none'})")


def demote_by_hand(model_name: str, version: str, reason: str) -> GateDecision:
    """Take `champion` away from `version` (which must hold it); recorded on the version."""
    _check_version(model_name, version)
    before = current_champion(model_name)
    if before != version:
        raise UserError(f"models:/{model_name}/{version} is not @{CHAMPION} (that is {before or 'no version'})")
    _client().delete_registered_model_alias(model_name, CHAMPION)
    _client().set_model_version_tag(model_name, version, "crn.gate.manual", json.dumps(
        {"action": f"demoted from @{CHAMPION} by hand", "reason": reason, "time": _now()}))
    return GateDecision(False, before, None, f"version {version} is no longer @{CHAMPION}; no version holds it now")


def _set_champion(model_name: str, version: str) -> None:
    _client().set_registered_model_alias(model_name, CHAMPION, version)


def _check_version(model_name: str, version: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        _client().get_model_version(model_name, version)
    except MlflowException as exc:
        raise UserError(f"models:/{model_name}/{version}: {first_line(exc)}") from None


def _record(model_name: str, candidate: str, champion: str | None, protocol_id: str, mine: dict,
            theirs: dict | None, decision: GateDecision) -> None:
    """The comparison, on the candidate and (if any) the champion it was compared with."""
    entry = {"decision": decision.reason, "promoted": decision.promoted, "protocol": protocol_id,
             "metric": GATE_METRIC, "candidate": candidate, "candidate_value": mine.get(GATE_METRIC),
             "champion": champion, "champion_value": theirs.get(GATE_METRIC) if theirs else None,
             "candidate_run": mine.get("run_id"), "time": _now()}
    client = _client()
    client.set_model_version_tag(model_name, candidate, "crn.gate.decision", decision.reason)
    if champion is not None:
        client.set_model_version_tag(model_name, candidate, f"crn.gate.vs_v{champion}", json.dumps(entry))
        client.set_model_version_tag(model_name, champion, f"crn.gate.vs_v{candidate}", json.dumps(entry))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
