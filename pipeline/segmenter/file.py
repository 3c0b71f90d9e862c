"""The segmenter that scores synthesized images: a TorchScript file and its class order.

Contract (the same for the segmenter this project trains, pipeline.segmenter.job, and for a
user's file, for example DRN-D-105 for the field's Cityscapes protocol):

- a TorchScript module (`torch.jit.save`) whose `forward` takes RGB float32 [B, 3, H, W] in
  0..1 (the module does its own normalisation) and returns class scores [B, C, h, w], or a
  dict with them under "out" (torchvision's segmentation models); scores of another size
  are resized bilinearly to H x W before the argmax;
- its class order: C names, which must equal the label schema's classes in index order,
  void left out. Inside the file as the extra file `classes.json` (a JSON list of names),
  or given beside it (`--segmenter-classes`). A different order is an error, never a
  silent remap: a segmenter trained with another order would score the wrong classes.

The file's sha256 is the segmenter's identity in the evaluation protocol
(pipeline.evaluation.protocol). `open_segmenter` accepts a file path (local or s3://) or a
registered segmenter (`models:/<name>@<alias>`, `models:/<name>/<version>`, `runs:/...`;
pipeline.registry.segmenters logs them).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.data.schema import LabelSchema
from pipeline.errors import UserError, first_line
from pipeline.registry.models import resolve_checkpoint
from pipeline.registry.pyfunc import SEGMENTER_KEY

CLASSES_ENTRY = "classes.json"  # the extra file inside the TorchScript archive


@dataclass
class SegmenterFile:
    """A segmenter as bytes, with what the protocol and the checks need."""

    data: bytes  # the TorchScript archive
    class_names: list[str]
    uri: str  # what the user gave
    version: str | None  # registry version, when it came from the registry

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def save_torchscript(module: torch.nn.Module, class_names: list[str], path: str | Path) -> Path:
    """Script `module` and save it with its class order inside (the contract above)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _torchscript_without_deprecation_notes():
        scripted = torch.jit.script(module.eval())
        torch.jit.save(scripted, str(path), _extra_files={CLASSES_ENTRY: json.dumps(list(class_names))})
    return path


@contextlib.contextmanager
def _torchscript_without_deprecation_notes():
    """torch 2.14 calls TorchScript deprecated on every script/save/load; it is still the one
    self-contained format the field's segmenters (and this contract) ship in."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit\..* is deprecated")
        yield


def open_segmenter(uri: str, classes_file: str = "") -> SegmenterFile:
    """Read a segmenter file and its class order (module docstring); one-line errors."""
    resolved = resolve_checkpoint(uri, artifact_key=SEGMENTER_KEY)  # a download when it is in the registry
    try:
        data = resolved.path.read_bytes()
    finally:
        resolved.cleanup()
    try:
        _, inside = _load(data)
    except RuntimeError as exc:
        raise UserError(f"segmenter {uri}: not a TorchScript file ({first_line(exc)})") from None
    if classes_file:
        try:
            names = json.loads(Path(classes_file).read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"--segmenter-classes {classes_file}: cannot read a JSON list of class names "
                            f"({first_line(exc)})") from None
        where = classes_file
    elif inside:
        names, where = json.loads(inside), f"{uri} ({CLASSES_ENTRY} inside)"
    else:
        raise UserError(f"segmenter {uri} does not say its class order: it has no {CLASSES_ENTRY} inside; "
                        "give one with --segmenter-classes <file.json> (a JSON list of names)")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UserError(f"segmenter classes {where}: expected a JSON list of class names")
    return SegmenterFile(data=data, class_names=names, uri=uri, version=resolved.version)


def check_class_order(segmenter: SegmenterFile, schema: LabelSchema) -> None:
    """The segmenter's classes must be the schema's, void left out, in the same order."""
    expected = schema.scored_class_names
    names = segmenter.class_names
    if names == expected:
        return
    if len(names) != len(expected):
        raise UserError(f"segmenter {segmenter.uri} predicts {len(names)} classes, schema '{schema.name}' has "
                        f"{len(expected)} besides void")
    index = next(i for i, (a, b) in enumerate(zip(names, expected)) if a != b)
    raise UserError(f"segmenter {segmenter.uri}: class {index} is '{names[index]}', schema '{schema.name}' has "
                    f"'{expected[index]}' there (the class order must match; nothing is remapped)")


def _load(data: bytes) -> tuple[torch.jit.ScriptModule, str]:
    extra = {CLASSES_ENTRY: ""}
    with _torchscript_without_deprecation_notes():
        module = torch.jit.load(io.BytesIO(data), map_location="cpu", _extra_files=extra)
    return module.eval(), extra[CLASSES_ENTRY]


class Segmenter:
    """A loaded segmenter: uint8 RGB images in, class-index maps out."""

    def __init__(self, data: bytes, num_scored_classes: int, device: str = "cpu"):
        self.module, _ = _load(data)
        self.module.to(device)
        self.num_scored_classes, self.device = num_scored_classes, device

    @torch.no_grad()
    def predict(self, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """uint8 [N, H, W, 3] -> uint8 [N, H, W] class indices 0..C-1."""
        images = np.asarray(images)
        height, width = images.shape[1:3]
        out = np.empty(images.shape[:3], dtype=np.uint8)
        for start in range(0, len(images), batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(self.device)
            scores = self.module(chunk.permute(0, 3, 1, 2).float() / 255.0)
            if isinstance(scores, dict):
                scores = scores["out"]
            if scores.ndim != 4 or scores.shape[1] != self.num_scored_classes:
                raise ValueError(f"segmenter returned scores of shape {tuple(scores.shape)}, expected "
                                 f"[B, {self.num_scored_classes}, h, w]")
            if scores.shape[-2:] != (height, width):
                scores = F.interpolate(scores, size=(height, width), mode="bilinear", align_corners=False)
            out[start:start + len(chunk)] = scores.argmax(dim=1).to(torch.uint8).cpu().numpy()
        return out
