"""The export job's configuration: one dataclass whose fields are the command line's flags."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

from crn.resolution import Resolution
from pipeline.data.store import VAL_SPLIT
from pipeline.errors import UserError
from pipeline.fs import absolute
from pipeline.options import dry_run_option, from_argv, option, store_option
from pipeline.registry.uris import model_uri

# The file formats the generator is written in (pipeline.export.job says what each holds).
FORMATS = ("torchscript", "onnx")


def parse_formats(text: str) -> tuple[str, ...]:
    """"onnx" or "torchscript,onnx" -> the formats, each once, in the order given."""
    names = [name.strip().lower() for name in str(text).split(",") if name.strip()]
    if not names:
        raise ValueError(f"name a format: {', '.join(FORMATS)}, or several comma-separated")
    for name in names:
        if name not in FORMATS:
            raise ValueError(f"unknown format '{name}' (known: {', '.join(FORMATS)})")
    return tuple(dict.fromkeys(names))


@dataclass
class ExportConfig:
    model: str = option(help="models:/<name>/<version>, models:/<name>@<alias>, a registered name alone "
                             "(= @champion), runs:/<id>/model, or a checkpoint file (local or s3://)")
    format: tuple[str, ...] = option(FORMATS, f"what to write: {' or '.join(FORMATS)}, or both comma-separated",
                                     parse=parse_formats)
    out: str = option("", "folder (or s3://bucket/prefix) for the files; default: <work dir>/exports/<name>-v<version> "
                          "(a checkpoint file: exports/checkpoint-<sha256 prefix>)")
    size: Resolution | None = option(None, "HxW of the exported network's label maps; default and only choice: the "
                                           "model's top resolution (the cascade fixes it)")
    store: str = store_option("a store to take the label maps the export is checked on from (its schema must be the "
                              "model's); default: toy street scenes drawn at the model's size", "")
    split: str = option(VAL_SPLIT, "the --store split to take those label maps from")
    dry_run: bool = dry_run_option()


def parse_export_config(argv: Sequence[str] | None) -> ExportConfig:
    config = from_argv(ExportConfig, argv, prog="jobs/export.py",
                       description="Write a generator as TorchScript and/or ONNX, checked against PyTorch on real "
                                   "label maps; logged on the model version's MLflow run.")
    return resolve(config)


def resolve(config: ExportConfig) -> ExportConfig:
    """Make the config explicit: the model URI spelled out, local paths absolute, formats checked."""
    try:  # a config built in code has not been through the flag's parser
        formats = parse_formats(",".join(config.format))
    except ValueError as exc:
        raise UserError(f"--format: {exc}") from None
    resolved = dataclasses.replace(config, model=model_uri(config.model), format=formats)
    for name in ("model", "out", "store"):
        setattr(resolved, name, absolute(getattr(resolved, name)))
    return resolved
