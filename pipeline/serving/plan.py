"""The serving job's plan: every check that needs no replica, made on the driver before Serve starts.

The model is opened once here (pipeline.registry.models.open_model: the URI resolves, the
checkpoint loads and fits its config), so that a wrong URI is one line now rather than a
replica that fails to start; each replica opens it again itself (an alias may have moved
meanwhile, and a replica follows it anyway). With --store, the store must hold the model's
resolution and split, in the model's label schema.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.data.schema import check_schema_match
from pipeline.data.store import open_store
from pipeline.options import to_dict
from pipeline.registry.models import ModelRef, open_model
from pipeline.registry.uris import ALIAS_URI
from pipeline.serving.config import ServeConfig, resolve


@dataclass
class ServePlan:
    config: ServeConfig
    model: ModelRef  # the version the alias named when the plan was made

    @property
    def follows(self) -> str:
        """The alias the replicas follow, "" for a URI that names none."""
        match = ALIAS_URI.match(self.config.model)
        return match["alias"] if match and self.config.poll_seconds > 0 else ""

    def describe(self) -> dict[str, Any]:
        """The resolved configuration: what --dry-run prints."""
        config = self.model.config
        return {
            **to_dict(self.config),
            "model.version": self.model.version or "",
            "model.pinned_uri": self.model.pinned_uri,
            "model.sha256": self.model.sha256,
            "model.resolution": str(config.top_resolution),
            "model.num_outputs": config.num_outputs,
            "model.schema": self.model.schema.name,
            "follows": f"@{self.follows}" if self.follows else "",
        }


def make_plan(config: ServeConfig, model: ModelRef | None = None) -> ServePlan:
    """`model`: already opened by the caller (it must be what `config.model` names)."""
    config = resolve(config)  # a config built in code, not parsed, is spelled out here
    model = model or open_model(config.model)
    if config.store:
        store = open_store(config.store)
        store.resolution(model.config.top_resolution)  # StoreError naming the resolutions it has
        store.count(config.split)  # StoreError naming its splits
        check_schema_match(model.schema.to_dict(), store.schema.to_dict(),
                           f"store {config.store} vs model {config.model}")
    return ServePlan(config, model)
