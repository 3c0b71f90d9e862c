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

DRN-D-105 is built in (pipeline.segmenter.drn): `drn-d-105:PATH`, `drn-d-105` (the file in
torch hub's checkpoints folder), or a plain path to a file holding its state dict, such as
the published `drn_d_105_cityscapes.pth`. The weights load with strict checks and are
scripted into a TorchScript module of the contract above, its class order the built-in
cityscapes schema's (the train ids); `--segmenter-classes` may only repeat that order. Its
identity is the sha256 of the .pth file the user has, not of the TorchScript made from it,
whose bytes depend on the torch version that scripted it.
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

from crn.resolution import Resolution
from pipeline.data.schema import LabelSchema, cityscapes_schema
from pipeline.errors import UserError, first_line
from pipeline.registry.models import resolve_checkpoint
from pipeline.registry.pyfunc import SEGMENTER_KEY
from pipeline.segmenter.drn import (DRN_D_105, DRNSegmenter, drn_d_105_from_state_dict, drn_d_105_path,
                                    is_drn_d_105_state_dict, read_torch_file)

CLASSES_ENTRY = "classes.json"  # the extra file inside the TorchScript archive
TORCHSCRIPT = "torchscript"  # a SegmenterFile's kind when the user's file is the TorchScript itself


@dataclass
class SegmenterFile:
    """A segmenter as bytes, with what the protocol and the checks need."""

    data: bytes  # the TorchScript archive
    class_names: list[str]
    uri: str  # what the user gave
    version: str | None  # registry version, when it came from the registry
    kind: str = TORCHSCRIPT  # or DRN_D_105: `data` was scripted here from the user's weights
    source_sha256: str | None = None  # sha256 of the user's weights file, when `data` was made from it

    @property
    def sha256(self) -> str:
        return self.source_sha256 or hashlib.sha256(self.data).hexdigest()


def save_torchscript(module: torch.nn.Module, class_names: list[str], path: str | Path) -> Path:
    """Script `module` and save it with its class order inside (the contract above)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(torchscript_bytes(module, class_names))
    return path


def torchscript_bytes(module: torch.nn.Module, class_names: list[str]) -> bytes:
    """`module` scripted, with its class order inside, as the bytes of a TorchScript file."""
    buffer = io.BytesIO()
    with _torchscript_without_deprecation_notes():
        scripted = torch.jit.script(module.eval())
        torch.jit.save(scripted, buffer, _extra_files={CLASSES_ENTRY: json.dumps(list(class_names))})
    return buffer.getvalue()


@contextlib.contextmanager
def _torchscript_without_deprecation_notes():
    """torch 2.14 calls TorchScript deprecated on every script/save/load; it is still the one
    self-contained format the field's segmenters (and this contract) ship in."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit\..* is deprecated")
        yield


def open_segmenter(uri: str, classes_file: str = "") -> SegmenterFile:
    """Read a segmenter file and its class order (module docstring); one-line errors."""
    if uri == DRN_D_105 or uri.startswith(DRN_D_105 + ":"):
        path = drn_d_105_path(uri)
        data = path.read_bytes()
        state = read_torch_file(data, f"{DRN_D_105} {path}")
        return _open_drn_d_105(uri, str(path), data, state, classes_file, version=None)
    resolved = resolve_checkpoint(uri, artifact_key=SEGMENTER_KEY)  # a download when it is in the registry
    try:
        data = resolved.path.read_bytes()
    finally:
        resolved.cleanup()
    try:
        _, inside = _load(data)
    except RuntimeError as exc:
        if (state := _drn_d_105_state(data)) is not None:
            return _open_drn_d_105(uri, uri, data, state, classes_file, resolved.version)
        raise UserError(f"segmenter {uri}: not a TorchScript file, nor a DRN-D-105 state dict "
                        f"({first_line(exc)})") from None
    if classes_file:
        names, where = _read_classes_file(classes_file), classes_file
    elif inside:
        names, where = json.loads(inside), f"{uri} ({CLASSES_ENTRY} inside)"
    else:
        raise UserError(f"segmenter {uri} does not say its class order: it has no {CLASSES_ENTRY} inside; "
                        "give one with --segmenter-classes <file.json> (a JSON list of names)")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UserError(f"segmenter classes {where}: expected a JSON list of class names")
    return SegmenterFile(data=data, class_names=names, uri=uri, version=resolved.version)


def _read_classes_file(classes_file: str) -> object:
    try:
        return json.loads(Path(classes_file).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"--segmenter-classes {classes_file}: cannot read a JSON list of class names "
                        f"({first_line(exc)})") from None


def _drn_d_105_state(data: bytes) -> object | None:
    """The state dict in a file that is no TorchScript, when it has DRN-D-105's keys."""
    try:
        state = read_torch_file(data, "")
    except UserError:
        return None
    return state if is_drn_d_105_state_dict(state) else None


def _open_drn_d_105(uri: str, path: str, data: bytes, state: object, classes_file: str,
                    version: str | None) -> SegmenterFile:
    """DRN-D-105 weights (`state`, read from `data`), checked strictly, scripted into the contract's module."""
    names = cityscapes_schema().scored_class_names
    if classes_file and _read_classes_file(classes_file) != names:
        raise UserError(f"--segmenter-classes {classes_file}: {DRN_D_105} predicts the Cityscapes train ids in "
                        f"train-id order ({', '.join(names[:3])}, ...); leave --segmenter-classes out")
    module = DRNSegmenter(drn_d_105_from_state_dict(state, f"{DRN_D_105} {path}"))
    return SegmenterFile(data=torchscript_bytes(module, names), class_names=names, uri=uri, version=version,
                         kind=DRN_D_105, source_sha256=hashlib.sha256(data).hexdigest())


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
    def predict(self, images: np.ndarray, batch_size: int = 16, size: str | None = None,
                extra_scales: tuple[float, ...] = ()) -> np.ndarray:
        """uint8 [N, H, W, 3] -> uint8 [N, h, w] class indices 0..C-1, (h, w) = (H, W) or `size`.

        `size` ("HxW"): the images are enlarged bilinearly to it first, and the maps have that
        size. `extra_scales`: DRN's multi-scale test (fyu/drn segment.py): the segmenter also
        sees the image resized by each scale (bicubic, as its loader; antialiased when
        shrinking, as PIL does), every output's log-probabilities are resized bilinearly to
        the image's size and summed, then the argmax. Scales of a size are int(H * s) x
        int(W * s), as DRN's loader rounds them.
        """
        images = np.asarray(images)
        height, width = Resolution.parse(size, crn_size=False) if size else images.shape[1:3]
        out = np.empty((len(images), height, width), dtype=np.uint8)
        for start in range(0, len(images), batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(self.device)
            chunk = chunk.permute(0, 3, 1, 2).float() / 255.0
            if chunk.shape[-2:] != (height, width):
                chunk = F.interpolate(chunk, size=(height, width), mode="bilinear", align_corners=False)
            scores = self._scores(chunk, height, width)
            if extra_scales:
                scores = F.log_softmax(scores, dim=1)
                for scale in extra_scales:
                    shown = F.interpolate(chunk, size=(int(height * scale), int(width * scale)), mode="bicubic",
                                          align_corners=False, antialias=scale < 1).clamp(0, 1)
                    scores += F.log_softmax(self._scores(shown, height, width), dim=1)
            out[start:start + len(chunk)] = scores.argmax(dim=1).to(torch.uint8).cpu().numpy()
        return out

    def _scores(self, images: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The module's class scores for float images [B, 3, h, w], resized bilinearly to height x width."""
        scores = self.module(images)
        if isinstance(scores, dict):
            scores = scores["out"]
        if scores.ndim != 4 or scores.shape[1] != self.num_scored_classes:
            raise ValueError(f"segmenter returned scores of shape {tuple(scores.shape)}, expected "
                             f"[B, {self.num_scored_classes}, h, w]")
        if scores.shape[-2:] != (height, width):
            shrinking = scores.shape[-2] > height
            scores = F.interpolate(scores, size=(height, width), mode="bilinear", align_corners=False,
                                   antialias=shrinking)
        return scores
