"""How the model is set up for one stage of the progressive recipe (docs/recipe.md#progressive-stages).

- Earlier stage: a 512p model starts from the 256p model's refinement modules (matched by
  name, "4x8" .. "256x512"); its new top module and its head start fresh. The head is never
  carried over: its input width and its 3K outputs belong to the stage that made it.
- Trained modules: the 1024p recipe trains only "512x1024", "1024x2048" and "head"; the
  other modules are frozen (no gradients, not in the optimizer).
- Activation checkpointing: each refinement module's activations are recomputed in the
  backward pass instead of kept, trading compute for memory at large resolutions.
"""
from __future__ import annotations

import torch
import torch.utils.checkpoint

from crn.config import CRNConfig
from crn.model import CRN
from pipeline.errors import UserError

HEAD = "head"
MODULE_PREFIX = "modules_by_res."


def module_names(config: CRNConfig) -> list[str]:
    """The names `--train-modules` accepts: the refinement modules, coarse first, then "head"."""
    return [str(r) for r in config.resolutions] + [HEAD]


def parse_train_modules(spec: str, config: CRNConfig) -> list[str]:
    """"all" or a comma list -> the module names that learn; unknown names are a user error."""
    known = module_names(config)
    if spec.strip() == "all":
        return known
    wanted = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in known]
    if unknown or not wanted:
        raise UserError(f"--train-modules {spec!r}: unknown module(s) {', '.join(unknown) or '(none given)'}; "
                        f"this model has {', '.join(known)}")
    return [name for name in known if name in wanted]


def freeze_all_but(model: CRN, trained: list[str]) -> None:
    """Only the named modules keep `requires_grad`; the optimizer gets `trainable_parameters`."""
    for name, module in model.modules_by_res.items():
        module.requires_grad_(name in trained)
    model.head.requires_grad_(HEAD in trained)


def trainable_parameters(model: CRN) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def earlier_stage_weights(earlier: dict[str, torch.Tensor], config: CRNConfig, source: str) -> dict[str, torch.Tensor]:
    """The entries of an earlier stage's state dict that the new model takes over.

    Every refinement module the two models share by name must have the same shapes (same
    label channels, same widths below it); the head and modules the earlier stage lacks
    stay as initialised. Raises a one-line UserError naming the first mismatch.
    """
    with torch.device("meta"):
        target = CRN(config).state_dict()
    carried = {}
    for key, value in earlier.items():
        if not key.startswith(MODULE_PREFIX) or key not in target:
            continue
        if tuple(value.shape) != tuple(target[key].shape):
            raise UserError(f"--init-from {source}: {key} has shape {tuple(value.shape)}, the new model "
                            f"needs {tuple(target[key].shape)} (different classes or widths)")
        carried[key] = value
    if not carried:
        raise UserError(f"--init-from {source}: shares no refinement module with the new model")
    return carried


def check_lower_stage(carried: dict[str, torch.Tensor], config: CRNConfig, lower_preset: str, source: str) -> None:
    """A stage that the recipe starts from `lower_preset` takes over every refinement module
    but its new top one (docs/recipe.md#progressive-stages); a model of another stage is a one-line UserError."""
    have = sorted({key.split(".")[1] for key in carried}, key=lambda name: int(name.split("x")[0]))
    wanted = [str(r) for r in config.resolutions[:-1]]
    if have != wanted:
        raise UserError(f"--init-from {source}: has modules {', '.join(have)}; this stage starts from a "
                        f"{lower_preset} model with modules {', '.join(wanted)}")


def load_earlier_stage(model: CRN, carried: dict[str, torch.Tensor]) -> None:
    missing, unexpected = model.load_state_dict(carried, strict=False)
    assert not unexpected, unexpected  # earlier_stage_weights only keeps keys the model has


def enable_activation_checkpointing(model: CRN) -> None:
    """Recompute each refinement module's activations during backward instead of storing them.

    crn.model has no switch for it, so each module's `forward` is wrapped on the instance;
    parameter names (and so checkpoints) are unchanged.
    """
    for module in model.modules_by_res.values():
        plain_forward = module.forward

        def checkpointed(x: torch.Tensor, plain_forward=plain_forward) -> torch.Tensor:
            return torch.utils.checkpoint.checkpoint(plain_forward, x, use_reentrant=False)

        module.forward = checkpointed
