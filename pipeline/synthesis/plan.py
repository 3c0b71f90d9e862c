"""The synthesis job's plan: every check that needs no actor, made on the driver.

The model is resolved once (a registry alias to its version, pipeline.registry.models) and
its checkpoint read; the input is opened (a store split at the model's top resolution, or a
folder of label maps validated like preprocessing does, pipeline.synthesis.inputs); the
input's label schema must equal the model's; the output's identity (pipeline.synthesis.outputs)
is fixed. Each problem is a one-line error.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any

from crn.checkpoint import load_checkpoint, model_from_checkpoint
from crn.config import CRNConfig
from pipeline.data.schema import LabelSchema, check_schema_match, load_schema
from pipeline.errors import UserError, first_line
from pipeline.options import to_dict
from pipeline.registry.models import resolve_checkpoint
from pipeline.synthesis.config import SynthesizeConfig
from pipeline.synthesis.inputs import SynthesisInput, open_label_folder, open_store_split
from pipeline.synthesis.outputs import OutputIdentity


@dataclass
class SynthesisPlan:
    config: SynthesizeConfig
    checkpoint_bytes: bytes
    model_config: CRNConfig
    schema: LabelSchema
    identity: OutputIdentity
    input: SynthesisInput
    model_name: str | None = None  # the registered model's name when the model came from the registry

    def describe(self) -> dict[str, Any]:
        """The resolved configuration: printed by --dry-run and logged as MLflow params."""
        return {
            **to_dict(self.config),
            "model.version": self.identity.model_version or "",
            "model.sha256": self.identity.model_sha256,
            "model.widths": list(self.model_config.widths),
            "model.num_outputs": self.model_config.num_outputs,
            "data.input": self.input.description,
            "data.larger_inputs": self.input.larger,
            "data.schema": self.schema.name,
            "data.resolution": self.identity.resolution,
        }


def make_plan(config: SynthesizeConfig) -> SynthesisPlan:
    """Every check that needs no actor: model, input, schema, resolution."""
    import torch

    resolved = resolve_checkpoint(config.model)
    try:
        checkpoint_bytes = resolved.path.read_bytes()
        # Built once here too, so that a checkpoint that does not fit its own config fails
        # now, in one line, rather than in every actor.
        ckpt = load_checkpoint(resolved.path)
        model_config = model_from_checkpoint(ckpt).config
        model_schema = LabelSchema.from_dict(ckpt["label_schema"], where=f"model {config.model}")
    except (ValueError, FileNotFoundError, RuntimeError, KeyError) as exc:
        raise UserError(f"model {config.model}: {first_line(exc)}") from None
    finally:
        resolved.cleanup()
    del ckpt  # the driver needs the description only; actors build the model

    top = model_config.top_resolution
    if config.resolution is not None and config.resolution != top:
        raise UserError(f"model {config.model} makes {top} images; --resolution {config.resolution} differs")
    input_schema = None if config.store else load_schema(config.schema)
    config = dataclasses.replace(config, resolution=top)
    if config.store:
        source = open_store_split(config.store, config.split, top)
    else:
        source = open_label_folder(config.labels, input_schema, config.label_type, top)
    check_schema_match(model_schema.to_dict(), source.schema.to_dict(), f"{source.description} vs model {config.model}")

    identity = OutputIdentity(
        model_uri=config.model,
        model_version=resolved.version,
        model_sha256=hashlib.sha256(checkpoint_bytes).hexdigest(),
        schema_name=model_schema.name,
        schema_fingerprint=model_schema.fingerprint(),
        resolution=str(top),
        num_outputs=model_config.num_outputs,
        precision=config.precision,
        seed=config.seed,
        device="cuda" if config.use_gpu else "cpu",
        batch_size=config.batch_size,
        threads_per_actor=0 if config.use_gpu else config.threads_per_actor,
        torch_version=torch.__version__,
    )
    return SynthesisPlan(config, checkpoint_bytes, model_config, model_schema, identity, source, resolved.name)
