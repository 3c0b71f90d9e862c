"""The export job: a generator written as TorchScript and/or ONNX, checked against eager PyTorch.

    outcome = run(parse_export_config(argv))        # what jobs/export.py does

What the exported network takes and gives, in both formats:
- in, `labels`: uint8 [B, H, W] class indices 0..L-1 (void = L-1) in the model's label
  schema, at the model's top resolution. The project's own form of a label map (the store,
  the MLflow model's `predict`), so a user feeds the array they already have; the one-hot
  map the generator wants ([B, L, H, W] float, 4L times the bytes) is made inside the
  graph. The graph cannot raise: an index of L or more gives a pixel of no class, not an
  error, so check maps from elsewhere first.
- out, `images`: float32 [B, K, 3, H, W], RGB, the generator's raw output: about 0..255 but
  not clamped (crn.model.to_uint8_images clamps and rounds it into pixels).

Sizes: the batch is free (a dynamic axis in the ONNX file); height and width are not. The
CRN's cascade starts at 4x8 and doubles once per module, so its module count fixes the one
size it takes (crn.model.CRN.check_input refuses any other); `--size` can only confirm it.

Exporters, on torch 2.14:
- ONNX: `torch.onnx.export(..., dynamo=True)`, the torch.export-based exporter (torch's
  default; the TorchScript-based one, `dynamo=False`, is deprecated), at opset 18: the
  lowest its operator library implements (lower ones go through a version converter), and
  one onnxruntime has run since 1.14. One self-contained file: the paper's largest model
  holds under 400 MiB of weights, far below ONNX's 2 GiB limit for a single file. Its layer
  norms are written as two-step means (TwoStepGroupNorm: onnxruntime's own sums drift).
- TorchScript: `torch.jit.trace`, which torch 2.14 calls deprecated; `torch.jit.load` still
  runs it without this repository.

Each file is run (onnxruntime on the CPU; torch.jit.load) on real label maps in the model's
schema (the first ones of a `--store` split, else toy street scenes drawn at the model's
size) and compared with the eager network (`ModelRef.build()`, one-hot by crn.labels): a
relative difference max|export - eager| / max|eager| above `MAX_REL_DIFF` fails the job, and
nothing is written. Then the files and `export.json` (what they take and give, the schema,
the differences) are written under `--out`, each atomically, and, for a registered version,
logged on the run that registered it: artifacts under `export/`, the differences as metrics
`export.<format>.max_abs_diff` and `.max_rel_diff`, and a tag per format on the version.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from crn.labels import one_hot
from crn.resolution import Resolution
from pipeline.data.schema import INVALID, LabelSchema, check_schema_match
from pipeline.data.store import open_store
from pipeline.data.toy import render_scene
from pipeline.errors import UserError, first_line
from pipeline.export.config import ExportConfig, resolve
from pipeline.fs import filesystem_for, join, uri_join, write_bytes_atomically
from pipeline.registry.models import ModelRef, open_model
from pipeline.runtime import use_tracking_store, work_dir

# The largest relative difference (max|export - eager| / max|eager|) an exported file may show.
MAX_REL_DIFF = 1e-4
ONNX_OPSET = 18  # why this one: the module docstring
# Label maps each file is checked on: two, so that the check also runs a batch of more than one.
CHECK_MAPS = 2
FILE_NAMES = {"torchscript": "generator.torchscript.pt", "onnx": "generator.onnx"}
RECORD_FILE = "export.json"  # written last: its presence means the export is complete
RECORD_FORMAT = "crn-export/1"
ARTIFACT_FOLDER = "export"  # on the version's MLflow run
INPUT_NAME, OUTPUT_NAME = "labels", "images"


class LabelsToImages(torch.nn.Module):
    """The generator behind the exported files: uint8 class indices [B, H, W] -> its images
    [B, K, 3, H, W] (the module docstring says why the one-hot map is made inside)."""

    def __init__(self, network: torch.nn.Module, num_classes: int):
        super().__init__()
        self.network = network
        self.num_classes = num_classes

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        classes = torch.arange(self.num_classes, device=labels.device).view(1, -1, 1, 1)
        # A comparison rather than F.one_hot: plain Equal and Cast in ONNX, and no data-dependent
        # range check for the exporters to trip over.
        onehot = (labels.long().unsqueeze(1) == classes).float()  # [B, L, H, W]
        return self.network(onehot)


# ---------------------------------------------------------------- the two formats


def torchscript_bytes(module: torch.nn.Module, example: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    with _quiet_torchscript():
        traced = torch.jit.trace(module, (example,))
        torch.jit.save(traced, buffer)
    return buffer.getvalue()


def run_torchscript(data: bytes, labels: np.ndarray) -> np.ndarray:
    with _quiet_torchscript():
        loaded = torch.jit.load(io.BytesIO(data), map_location="cpu")
    with torch.inference_mode():
        return loaded(torch.from_numpy(labels)).numpy()


@contextlib.contextmanager
def _quiet_torchscript():
    """Without two kinds of notes that say nothing here: torch 2.14's deprecation of TorchScript
    on every call, and the tracer's note that the model's shape checks (crn.model.CRN.check_input)
    become constants, true for the one size the model takes."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit\..* is deprecated")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


class TwoStepGroupNorm(torch.nn.Module):
    """nn.GroupNorm with each statistic taken in two means, along rows and then across them.

    onnxruntime's InstanceNormalization and ReduceMean (what the exporters turn GroupNorm
    into) each sum a group in one float32 pass: at the 256p model's top, 32 x 256 x 512
    values per sample, one norm came out 9e-5 relative off float64 (PyTorch: 1e-7), and a
    crn-mid of seven norms 1.1e-4 off eager PyTorch. Two means of a few hundred values each
    bring a norm to 4e-7, at the same speed."""

    def __init__(self, norm: torch.nn.GroupNorm):
        super().__init__()
        self.num_groups, self.eps = norm.num_groups, norm.eps
        self.weight, self.bias = norm.weight, norm.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        groups = x.reshape(batch, self.num_groups, -1, width)  # [B, G, C/G * H, W]
        centred = groups - groups.mean(dim=-1, keepdim=True).mean(dim=-2, keepdim=True)
        variance = (centred * centred).mean(dim=-1, keepdim=True).mean(dim=-2, keepdim=True)
        normed = (centred / torch.sqrt(variance + self.eps)).reshape(batch, channels, height, width)
        if self.weight is None:
            return normed
        return normed * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def with_two_step_norms(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of `module` whose GroupNorms (over [B, C, H, W] maps in the generators) are
    TwoStepGroupNorms with the same weights."""
    module = copy.deepcopy(module)
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.GroupNorm):
                setattr(parent, name, TwoStepGroupNorm(child))
    return module


def onnx_bytes(module: torch.nn.Module, example: torch.Tensor) -> bytes:
    program = torch.onnx.export(
        with_two_step_norms(module), (example,), dynamo=True, opset_version=ONNX_OPSET, input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME], dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch", min=1)}},
        verbose=False)
    return program.model_proto.SerializeToString()


def run_onnx(data: bytes, labels: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: labels})[0]


EXPORTERS: dict[str, Callable[[torch.nn.Module, torch.Tensor], bytes]] = {
    "torchscript": torchscript_bytes, "onnx": onnx_bytes}
RUNNERS: dict[str, Callable[[bytes, np.ndarray], np.ndarray]] = {"torchscript": run_torchscript, "onnx": run_onnx}


# ---------------------------------------------------------------- what the files are checked on


def check_size(model: ModelRef, size: Resolution | None) -> Resolution:
    """The size the export takes: the model's top resolution, the only one it can."""
    top = Resolution(*model.config.top_resolution)
    if size is not None and tuple(size) != top:
        raise UserError(f"--size {size}: model {model.uri} takes label maps of {top} only (its cascade of "
                        "refinement modules fixes the size)")
    return top


def check_labels(model: ModelRef, config: ExportConfig, size: Resolution) -> tuple[np.ndarray, str]:
    """uint8 [CHECK_MAPS, H, W] class-index maps in the model's schema, and where they come from."""
    if config.store:
        return store_labels(model, config.store, config.split, size)
    seeds = range(CHECK_MAPS)
    return toy_labels(model.schema, size, seeds), f"toy street scenes (pipeline.data.toy, seeds {seeds[0]}..{seeds[-1]})"


def store_labels(model: ModelRef, uri: str, split: str, size: Resolution) -> tuple[np.ndarray, str]:
    store = open_store(uri)
    check_schema_match(model.schema.to_dict(), store.schema.to_dict(), f"store {uri} vs model {model.uri}")
    rows = store.head(split, size, CHECK_MAPS)
    if not rows:
        raise UserError(f"store {uri}: split '{split}' has no samples to check the export on")
    names = ", ".join(str(row["sample_id"]) for row in rows)
    return np.stack([np.asarray(row["label"], np.uint8) for row in rows]), f"store {uri}, {split} samples {names}"


def toy_labels(schema: LabelSchema, size: Resolution, seeds: Sequence[int]) -> np.ndarray:
    """Toy scenes drawn at `size`, their Cityscapes ids read through `schema` (ids it does not
    list are void, as preprocessing's `--unknown-labels void` reads them)."""
    table = schema.id_table()
    table = np.where(table == INVALID, schema.void_index, table).astype(np.uint8)
    scenes = [render_scene(np.random.default_rng(seed), size.height, size.width)[1] for seed in seeds]
    return np.stack([np.take(table, ids) for ids in scenes])


# ---------------------------------------------------------------- the comparison


@dataclass(frozen=True)
class Difference:
    max_abs: float  # max |export - eager| over every value of the check's images
    max_rel: float  # max_abs / max |eager|

    @property
    def within_tolerance(self) -> bool:
        return self.max_rel <= MAX_REL_DIFF  # False for NaN too


def eager_images(network: torch.nn.Module, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """The reference: the network as the pipeline runs it, one-hot map by crn.labels."""
    with torch.inference_mode():
        return network(one_hot(torch.from_numpy(labels), num_classes)).numpy()


def difference(outputs: np.ndarray, reference: np.ndarray) -> Difference:
    if outputs.shape != reference.shape:
        return Difference(float("inf"), float("inf"))
    max_abs = float(np.max(np.abs(outputs.astype(np.float64) - reference)))
    scale = float(np.max(np.abs(reference))) or 1.0  # an all-zero reference: the absolute difference
    return Difference(max_abs, max_abs / scale)


# ---------------------------------------------------------------- writing and logging


def default_out(model: ModelRef) -> str:
    leaf = f"{model.name}-v{model.version}" if model.name and model.version else f"checkpoint-{model.sha256[:12]}"
    return str(work_dir() / "exports" / leaf)


def export_record(model: ModelRef, size: Resolution, source: str, differences: dict[str, Difference]) -> dict[str, Any]:
    """export.json: what the files are, what they take and give, and how close they came."""
    height, width = size
    num_classes, num_outputs = model.config.num_classes, model.config.num_outputs
    return {
        "format": RECORD_FORMAT,
        "model": {"uri": model.pinned_uri, "name": model.name, "version": model.version, "sha256": model.sha256,
                  "generator": model.generator.name, "config": model.config.to_dict()},
        "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": ["batch", height, width],
                  "meaning": f"class indices 0..{num_classes - 1} of the schema below, void = {num_classes - 1}"},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", num_outputs, 3, height, width],
                   "meaning": "RGB, about 0..255, not clamped: clamp to 0..255 and round for pixels"},
        "files": {fmt: {"file": FILE_NAMES[fmt], "max_abs_diff": diff.max_abs, "max_rel_diff": diff.max_rel}
                  for fmt, diff in differences.items()},
        "onnx_opset": ONNX_OPSET if "onnx" in differences else None,
        "torch": torch.__version__,
        "checked_on": source,
        "max_rel_diff_allowed": MAX_REL_DIFF,
        "schema": model.schema.to_dict(),
    }


def write_out(out: str, files: dict[str, bytes]) -> dict[str, str]:
    """Each file written atomically under `out`, in the order given; their locations."""
    try:
        fs, root = filesystem_for(out)
        for name, data in files.items():
            write_bytes_atomically(fs, join(root, name), data)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot write to --out {out}: {first_line(exc)}") from None
    return {name: uri_join(out, name) for name in files}


def log_on_version_run(model: ModelRef, files: dict[str, bytes], differences: dict[str, Difference]) -> str | None:
    """The files as artifacts under `export/` of the run that registered the version, the
    differences as its metrics, a tag per format on the version; the run's id (None: the
    version names no run)."""
    from mlflow.tracking import MlflowClient

    use_tracking_store()
    client = MlflowClient()
    run_id = client.get_model_version(model.name, model.version).run_id
    if not run_id:
        return None
    with tempfile.TemporaryDirectory(prefix="crn-export-") as folder:
        for name, data in files.items():
            Path(folder, name).write_bytes(data)
        client.log_artifacts(run_id, folder, artifact_path=ARTIFACT_FOLDER)
    for fmt, diff in differences.items():
        client.log_metric(run_id, f"export.{fmt}.max_abs_diff", diff.max_abs)
        client.log_metric(run_id, f"export.{fmt}.max_rel_diff", diff.max_rel)
        client.set_model_version_tag(model.name, model.version, f"crn.export.{fmt}",
                                     f"runs:/{run_id}/{ARTIFACT_FOLDER}/{FILE_NAMES[fmt]}")
    if "onnx" in differences:
        client.set_tag(run_id, "crn.export.onnx_opset", str(ONNX_OPSET))
    return run_id


# ---------------------------------------------------------------- entry point


@dataclass
class ExportOutcome:
    model_uri: str  # pinned: models:/<name>/<version>, or the checkpoint as given
    out: str
    files: dict[str, str]  # format -> where its file was written
    differences: dict[str, Difference]
    label_source: str  # what the files were checked on
    run_id: str | None  # the version's run they were logged on; None: nothing logged


def run(config: ExportConfig) -> ExportOutcome:
    """The whole job for a parsed config (not a dry run: see jobs/export.py)."""
    config = resolve(config)  # a config built in code, not parsed, is spelled out here
    model = open_model(config.model)
    size = check_size(model, config.size)
    labels, source = check_labels(model, config, size)
    network = model.build()
    reference = eager_images(network, labels, model.config.num_classes)
    module = LabelsToImages(network, model.config.num_classes).eval()
    exported, differences = {}, {}
    for fmt in config.format:
        exported[fmt] = EXPORTERS[fmt](module, torch.from_numpy(labels))
        differences[fmt] = difference(RUNNERS[fmt](exported[fmt], labels), reference)
        print(f"{fmt}: max abs diff {differences[fmt].max_abs:.3g}, max rel diff {differences[fmt].max_rel:.3g} "
              f"against eager PyTorch on {len(labels)} label maps of {size}: {source}")
    failed = [fmt for fmt, diff in differences.items() if not diff.within_tolerance]
    if failed:
        raise UserError(f"{' and '.join(failed)} export of {model.pinned_uri} differs from eager PyTorch by more than "
                        f"{MAX_REL_DIFF:g} relative (see above); nothing written")

    out = config.out or default_out(model)
    record = json.dumps(export_record(model, size, source, differences), indent=1).encode()
    files = {**{FILE_NAMES[fmt]: data for fmt, data in exported.items()}, RECORD_FILE: record}
    written = write_out(out, files)
    run_id = log_on_version_run(model, files, differences) if model.name and model.version else None
    where = (f"logged under {ARTIFACT_FOLDER}/ on MLflow run {run_id} of {model.pinned_uri}" if run_id else
             f"nothing logged to MLflow ({model.uri} is not a registered version with a run)")
    print(f"exported {model.pinned_uri} ({', '.join(config.format)}) to {out}; {where}")
    return ExportOutcome(model.pinned_uri, out, {fmt: written[FILE_NAMES[fmt]] for fmt in exported}, differences,
                         source, run_id)
