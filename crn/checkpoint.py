"""One self-describing checkpoint file per training state (docs/design.md#checkpoint-format).

The file is a dict of plain types and tensors, so `torch.load(path, weights_only=True)` reads
it without running any pickled code, and it rebuilds the model with no other input:

    {"format": "crn-checkpoint/1", "generator": "crn", "model_config": dict, "model": state_dict,
     "optimizer": state_dict | None, "step": int, "epoch": int, "loss_weights": list[float],
     "label_schema": dict, "rng": dict, "extra": dict}

`generator` names the network's kind (crn.generators); a checkpoint without it is a CRN.
Writes are atomic (a temporary file in the same folder, then a rename), so a reader never
sees half a checkpoint.
"""
from __future__ import annotations

import io
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crn.generators import DEFAULT_GENERATOR, Generator, generator_named, generator_of

FORMAT = "crn-checkpoint/1"
REQUIRED_KEYS = (
    "format", "model_config", "model", "optimizer", "step", "epoch",
    "loss_weights", "label_schema", "rng", "extra",
)


def make_checkpoint(
    model: torch.nn.Module,
    *,
    optimizer: torch.optim.Optimizer | None,
    step: int,
    epoch: int,
    loss_weights: tuple[float, ...] | list[float],
    label_schema: dict,
    rng: dict | None = None,
    extra: dict | None = None,
) -> dict[str, Any]:
    """Assemble the checkpoint dict; `rng` defaults to this process's current RNG state."""
    return {
        "format": FORMAT,
        "generator": generator_of(model).name,
        "model_config": model.config.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "step": int(step),
        "epoch": int(epoch),
        "loss_weights": [float(w) for w in loss_weights],
        "label_schema": dict(label_schema),
        "rng": capture_rng_state() if rng is None else rng,
        "extra": dict(extra or {}),
    }


def save_checkpoint(path: str | os.PathLike, ckpt: dict[str, Any]) -> None:
    """Write `ckpt` to `path` atomically (temp file in the same folder, fsync, rename)."""
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing or ckpt.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} dict: missing {missing}, format {ckpt.get('format')!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def load_checkpoint(source: str | os.PathLike | bytes, name: str | None = None) -> dict[str, Any]:
    """Read a checkpoint, from a path or from the bytes of one, with `torch.load(weights_only=True)`.

    `name` is what errors call the bytes (say, the file they were read from).

    One-line errors for bad files: FileNotFoundError for a missing path, ValueError for
    anything that is not a readable checkpoint of this format.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        name, handle = name or f"({len(source)} bytes)", io.BytesIO(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        name, handle = str(path), path
    try:
        ckpt = torch.load(handle, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"checkpoint {name} cannot be read: {reason}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"checkpoint {name} is not a {FORMAT} file (format: {found!r})")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"checkpoint {name} lacks {', '.join(missing)}")
    return ckpt


def generator_name(ckpt: dict[str, Any]) -> str:
    """The kind of generator a checkpoint holds (crn.generators)."""
    return ckpt.get("generator") or DEFAULT_GENERATOR


def model_from_checkpoint(ckpt: dict[str, Any], generator: Generator | None = None) -> torch.nn.Module:
    """Rebuild the generator the checkpoint describes, weights loaded, in eval mode.

    `generator`: its kind, when the caller already has it (a process where a plug-in kind was
    never registered gets it this way); by default the one the checkpoint names."""
    generator = generator or generator_named(generator_name(ckpt))
    model = generator.build(generator.config_from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model.eval()


def capture_rng_state() -> dict[str, Any]:
    """torch, numpy and Python RNG states as tensors and ints (weights_only-loadable)."""
    version, mt_state, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "state": torch.tensor(mt_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": np_kind,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
    }


def restore_rng_state(rng: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`."""
    torch.set_rng_state(rng["torch"])
    py = rng["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = rng["numpy"]
    np.random.set_state(
        (npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["gauss"])
    )
