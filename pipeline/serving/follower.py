"""The model version a replica serves, and how it follows the registry alias it was given.

    follower = Follower("models:/crn-cityscapes-256x512@champion", device="cpu", poll_seconds=10)
    served = follower.current        # read once per batch: the batch is made by that version

Each replica follows the alias itself: every `poll_seconds` a thread of the replica asks the
registry which version the alias names (one small registry query, no download); when it
has moved, the thread opens that version (pipeline.registry.models.open_model, pinned to
the version it found), builds it, and then swaps `current` by assigning one reference.
The batch handler reads `current` once at the start of each batch, so a batch is made by
one version from start to end, its answers name that version, and a request never waits
for a load: the old version serves until the new one is ready. Nothing is restarted or
redeployed, so no request is dropped or sent to a cold replica, and it works the same
whether the job that deployed the service is still there or not.

Why not Serve's `reconfigure` or a redeploy driven from the job: both need the driver to
poll and push, a redeploy starts fresh replicas (a model load and warm-up each, twice the
memory meanwhile) and drains the old ones; `reconfigure` marks the replicas as updating
while it loads. Polling from each replica costs one registry query per replica per period.

What a new version must keep: the label schema, the top resolution and K. Clients (the
page, a client's variant numbers) rely on them, and the project never remaps a schema
silently, so a version that changes them is refused (said in /health and the replica's
log) and the replica keeps serving the one it has; serving it takes a new deployment.
A version that fails to load is retried at the next poll. A model URI that names no alias
(a fixed version, a file) is served as it is.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from crn.inference import generate_images
from crn.resolution import Resolution
from pipeline.errors import first_line
from pipeline.registry.models import ModelRef, open_model
from pipeline.registry.uris import ALIAS_URI

# Serve's replica logger: lines reach the replica's log file (and the console of a job whose
# Ray is local), tagged with the replica's name.
logger = logging.getLogger("ray.serve")
SWAPS_KEPT = 20  # the latest swaps /health lists


@dataclass(frozen=True)
class ServedModel:
    """One opened model version and its network, ready on the replica's device."""

    ref: ModelRef
    network: torch.nn.Module
    device: str

    @property
    def version(self) -> str:
        """The registry version; "" for a model outside the registry (a checkpoint file)."""
        return self.ref.version or ""

    @property
    def uri(self) -> str:
        return self.ref.pinned_uri

    @property
    def resolution(self) -> Resolution:
        return Resolution(*self.ref.config.top_resolution)

    @property
    def num_outputs(self) -> int:
        return int(self.ref.config.num_outputs)

    def contract(self) -> dict[str, str]:
        """What clients rely on and a new version must keep (module docstring)."""
        return {"schema": self.ref.schema.fingerprint(), "resolution": str(self.resolution),
                "num_outputs": str(self.num_outputs)}

    def generate(self, maps: np.ndarray, batch_size: int) -> np.ndarray:
        """uint8 [B, H, W] -> uint8 [B, K, H, W, 3], every pass padded to `batch_size` maps."""
        return generate_images(self.network, maps, device=self.device, batch_size=batch_size)


def fix_torch_settings(device: str, threads: int) -> None:
    """What fixes a replica's pixels besides the weights (pipeline.synthesis.outputs): the torch
    thread count on a CPU, a fixed convolution algorithm on a GPU."""
    if device == "cpu":
        torch.set_num_threads(threads)
    else:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def load_model(uri: str, device: str) -> ServedModel:
    ref = open_model(uri)
    return ServedModel(ref, ref.build().to(device), device)


def alias_version(name: str, alias: str) -> str:
    """The version `models:/<name>@<alias>` names now: one registry query, nothing downloaded."""
    from mlflow.tracking import MlflowClient

    from pipeline.runtime import use_tracking_store

    use_tracking_store()
    return str(MlflowClient().get_model_version_by_alias(name, alias).version)


@dataclass
class FollowState:
    """What /health shows about following the alias."""

    alias: str  # "" when the URI names none
    poll_seconds: float
    checks: int = 0
    last_check: str = ""  # UTC time of the last look at the registry
    error: str = ""  # the last look's or load's failure, "" once one succeeds
    refused: dict[str, str] = field(default_factory=dict)  # {"version", "reason"} of a version not served
    swaps: list[dict[str, str]] = field(default_factory=list)  # {"from", "to", "time"}, the latest, oldest first

    def to_dict(self) -> dict[str, Any]:
        return {"alias": self.alias, "poll_seconds": self.poll_seconds, "checks": self.checks,
                "last_check": self.last_check, "error": self.error, "refused": self.refused, "swaps": self.swaps}


class Follower:
    """`current`: the version this replica serves; a thread moves it along the alias."""

    def __init__(self, uri: str, device: str, poll_seconds: float):
        self.device = device
        self.current = load_model(uri, device)
        self.alias = ALIAS_URI.match(uri)
        self.state = FollowState(self.alias["alias"] if self.alias else "", poll_seconds)
        self._stop = threading.Event()
        if self.alias and poll_seconds > 0:
            threading.Thread(target=self._poll, args=(poll_seconds,), name="crn-follow-alias", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _poll(self, seconds: float) -> None:
        while not self._stop.wait(seconds):
            self.check()

    def check(self) -> bool:
        """Look at the registry once; swap in the version the alias names if it moved. True on a swap."""
        name = self.alias["name"]
        self.state.checks += 1
        self.state.last_check = _now()
        try:
            version = alias_version(name, self.alias["alias"])
        except Exception as exc:  # MLflow, SQL and HTTP errors alike: keep serving, say why
            self.state.error = f"cannot resolve @{self.alias['alias']}: {first_line(exc)}"
            return False
        if version == self.current.version or version == self.state.refused.get("version"):
            self.state.error = ""
            return False
        try:
            candidate = load_model(f"models:/{name}/{version}", self.device)
        except Exception as exc:  # a download or a checkpoint that fails: retried at the next poll
            self.state.error = f"cannot load models:/{name}/{version}: {first_line(exc)}"
            logger.warning(f"still serving version {self.current.version}: {self.state.error}")
            return False
        self.state.error = ""
        changed = {key: (value, candidate.contract()[key]) for key, value in self.current.contract().items()
                   if candidate.contract()[key] != value}
        if changed:
            reason = "; ".join(f"{key} {old} -> {new}" for key, (old, new) in changed.items())
            self.state.refused = {"version": version, "reason": f"changes what clients rely on ({reason}); "
                                                                f"deploy the service again to serve it"}
            logger.warning(f"not serving models:/{name}/{version}: {self.state.refused['reason']}")
            return False
        previous = self.current.version
        self.current = candidate  # one reference: a running batch keeps the version it read
        self.state.refused = {}
        self.state.swaps = [*self.state.swaps, {"from": previous, "to": version, "time": _now()}][-SWAPS_KEPT:]
        logger.info(f"now serving models:/{name}/{version} (@{self.alias['alias']} moved from version {previous})")
        return True


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
