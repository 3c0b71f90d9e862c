"""Moving @champion by hand: the command behind jobs/promote.py, recorded like the gate's moves.

    python jobs/promote.py --model crn-toy-64x128 --version 3 --reason "A/B test won"
    python jobs/promote.py --model crn-toy-64x128 --version 3 --demote --reason "artefacts on night scenes"

The evaluation's `--promote` compares scores (pipeline.registry.gate.promote_if_better); this
command does not, for the decisions people make on other grounds. Both versions involved get
a `crn.gate.manual` tag saying what was done, when, and the reason given.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from pipeline.errors import UserError
from pipeline.options import experiment_option, from_argv, option
from pipeline.registry import gate
from pipeline.runtime import setup_mlflow


def _version_number(text: str) -> str:
    if not text.isdigit():
        raise ValueError(f"a version is a number, got '{text}'")
    return text


@dataclass
class PromoteConfig:
    model: str = option(help="registered model name (as in models:/<name>/<version>)")
    version: str = option(help="the model version to promote (or with --demote, to demote)", parse=_version_number)
    reason: str = option(help="why, in a few words (recorded on the versions)")
    demote: bool = option(False, "take @champion away from --version instead (no version holds it afterwards)")
    experiment: str = experiment_option("crn-evaluate", "MLflow experiment (only selects the tracking set-up)")

    def check(self) -> None:
        if not self.reason.strip():
            raise UserError("--reason: say why (it is recorded on the model versions)")


def parse_promote_config(argv: Sequence[str] | None) -> PromoteConfig:
    return from_argv(PromoteConfig, argv, prog="jobs/promote.py",
                     description="Make a registered CRN version @champion by hand, or take the alias away; "
                                 "recorded on the versions.")


def run(config: PromoteConfig) -> gate.GateDecision:
    setup_mlflow(config.experiment)
    if config.demote:
        decision = gate.demote_by_hand(config.model, config.version, config.reason)
    else:
        decision = gate.set_champion_by_hand(config.model, config.version, config.reason)
    print(decision.reason)
    return decision
