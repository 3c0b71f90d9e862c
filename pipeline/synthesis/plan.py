"""The synthesis job's plan: every check that needs no actor, made on the driver.

The model is opened once (pipeline.registry.models.open_model: a registry alias resolved to
its version, the checkpoint read and checked), or handed over already opened by the stage
that runs this one; the input is opened (a store split at the model's top resolution, or a
folder of label maps validated like preprocessing does, pipeline.synthesis.inputs); the
input's label schema must equal the model's; the output's identity (pipeline.synthesis.outputs)
is fixed. Each problem is a one-line error.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pipeline.data.schema import check_schema_match, load_schema
from pipeline.errors import UserError
from pipeline.options import to_dict
from pipeline.registry.models import ModelRef, open_model
from pipeline.synthesis.config import SynthesizeConfig, resolve
from pipeline.synthesis.inputs import SynthesisInput, open_label_folder, open_store_split
from pipeline.synthesis.outputs import OutputIdentity


@dataclass
class SynthesisPlan:
    config: SynthesizeConfig
    model: ModelRef
    identity: OutputIdentity
    input: SynthesisInput

    def describe(self) -> dict[str, Any]:
        """The resolved configuration: printed by --dry-run and logged as MLflow params."""
        return {
            **to_dict(self.config),
            "model.version": self.identity.model_version or "",
            "model.sha256": self.identity.model_sha256,
            "model.generator": self.model.generator.name,
            "model.num_outputs": self.model.config.num_outputs,
            "model.config": self.model.config.to_dict(),
            "data.input": self.input.description,
            "data.larger_inputs": self.input.larger,
            **{f"data.label_maps_read_as_{kind}": count for kind, count in self.input.label_types.items()},
            "data.schema": self.model.schema.name,
            "data.resolution": self.identity.resolution,
        }


def make_plan(config: SynthesizeConfig, model: ModelRef | None = None) -> SynthesisPlan:
    """Every check that needs no actor: model, input, schema, resolution.

    `model`: the generator, when the caller has opened it already (an evaluation hands on the
    version it scores); else `config.model` is opened here."""
    import torch

    config = resolve(config)  # a config built in code, not parsed, is spelled out here
    model = model or open_model(config.model)
    top = model.config.top_resolution
    if config.resolution is not None and config.resolution != top:
        raise UserError(f"model {config.model} makes {top} images; --resolution {config.resolution} differs")
    input_schema = None if config.store else load_schema(config.schema)
    config = dataclasses.replace(config, resolution=top)
    if config.store:
        source = open_store_split(config.store, config.split, top)
    else:
        source = open_label_folder(config.labels, input_schema, config.label_type, top)
    check_schema_match(model.schema.to_dict(), source.schema.to_dict(), f"{source.description} vs model {config.model}")

    identity = OutputIdentity(
        model_uri=config.model,
        model_version=model.version,
        model_sha256=model.sha256,
        schema_name=model.schema.name,
        schema_fingerprint=model.schema.fingerprint(),
        resolution=str(top),
        num_outputs=model.config.num_outputs,
        precision=config.precision,
        seed=config.seed,
        device="cuda" if config.use_gpu else "cpu",
        batch_size=config.batch_size,
        threads_per_actor=0 if config.use_gpu else config.threads_per_actor,
        torch_version=torch.__version__,
    )
    return SynthesisPlan(config, model, identity, source)
