"""One declaration per option: a job's config dataclass field carries its flag, help and check.

    @dataclass
    class TrainConfig:
        store: str = option(help="preprocessed store: a folder or s3://bucket/prefix")
        steps: int = option(0, "stop after this many optimizer steps; 0 = no limit", check=non_negative)

    config = from_argv(TrainConfig, argv, prog="jobs/train.py", description="...")

The flag is the field's name with dashes (`--num-workers`); a field without a default is a
required flag; a `bool` field is a switch. A flag's text goes through `parse` (default: the
field's type) and then `check`; either may raise ValueError, which becomes a one-line
UserError naming the flag. A config class may add `check(self)` for rules between fields.
Every job builds its command line this way, so `--help`, the checks and `--dry-run`
(`to_dict`) always agree with the dataclass.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Callable, Sequence, TypeVar

from crn.resolution import Resolution
from pipeline.errors import UserError

T = TypeVar("T")

AUTO = "auto"  # a field's value "auto": filled in from the data, the preset or the recipe when the job resolves it
PRECISIONS = ("fp32", "bf16")  # how a network runs: float32, or bfloat16 autocast


def option(default: Any = dataclasses.MISSING, help: str = "", *, parse: Callable[[str], Any] | None = None,
           choices: Sequence[str] | None = None, check: Callable[[Any], None] | None = None,
           identity: bool = False, group: str = "") -> Any:
    """A dataclass field that is also a command-line flag (see the module docstring).

    `identity=True` marks a field that changes what a job computes (see `identity_of`).
    `group` titles the section of --help the flag is listed in (default: the job's own options).
    """
    metadata = {"help": help, "parse": parse, "choices": choices, "check": check, "identity": identity, "group": group}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# ---- the options every job shares, declared once (each job picks the ones it has) ----

TRACKING = "tracking (MLflow)"


def store_option(help: str = "preprocessed store: a folder or s3://bucket/prefix", default: Any = dataclasses.MISSING,
                 identity: bool = False) -> Any:
    return option(default, help, identity=identity)


def batch_size_option(default: int, what: str, identity: bool = False) -> Any:
    return option(default, what, check=at_least(1), identity=identity)


def experiment_option(default: str, help: str = "MLflow experiment name") -> Any:
    return option(default, help, group=TRACKING)


def run_name_option() -> Any:
    """The MLflow run's name. (Training's `--run-name` names its Ray Train run, which resumes.)"""
    return option("", "MLflow run name (default: MLflow's)", group=TRACKING)


def dry_run_option(shows: str = "the resolved configuration") -> Any:
    return option(False, f"print {shows} and exit", group=TRACKING)


def at_least(minimum: float) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if value < minimum:
            raise ValueError(f"must be at least {minimum:g}, got {value}")

    return check


non_negative = at_least(0)


def one_of(*allowed: str) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")

    return check


def positive(value: Any) -> None:
    if value <= 0:
        raise ValueError(f"must be positive, got {value}")


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser(cls: type, prog: str, description: str) -> argparse.ArgumentParser:
    """The argparse parser of a config dataclass: one flag per `option` field."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    groups: dict[str, Any] = {"": parser}
    types = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        meta = field.metadata
        title = meta.get("group", "")
        if title not in groups:
            groups[title] = parser.add_argument_group(title)
        add = groups[title].add_argument
        flag = flag_name(field.name)
        required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        if types[field.name] is bool:
            add(flag, action="store_true", help=meta.get("help", ""))
            continue
        default = None if required else _default(field)
        shown = "" if required or default in ("", None) else f" (default: {format_value(default)})"
        add(flag, required=required, default=None, choices=meta.get("choices"),
            metavar=None if meta.get("choices") else field.name.upper(), help=meta.get("help", "") + shown)
    return parser


def from_argv(cls: type[T], argv: Sequence[str] | None, prog: str, description: str) -> T:
    """Parse `argv` into a `cls` instance: parse and check every flag, then `cls.check()`."""
    args = build_parser(cls, prog, description).parse_args(argv)
    types = typing.get_type_hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        text = getattr(args, field.name)
        if text is None or types[field.name] is bool:
            values[field.name] = _default(field) if text is None else text
            continue  # defaults are valid by construction
        parse = field.metadata.get("parse") or _parser_for(types[field.name])
        try:
            value = parse(text)
        except ValueError as exc:
            raise UserError(f"{flag_name(field.name)}: {exc}") from None
        check = field.metadata.get("check")
        if check is not None:
            try:
                check(value)
            except ValueError as exc:
                raise UserError(f"{flag_name(field.name)}: {exc}") from None
        values[field.name] = value
    config = cls(**values)
    if hasattr(config, "check"):
        config.check()
    return config


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain JSON types (resolutions as "HxW"), for --dry-run, MLflow and Ray."""
    return {field.name: plain(getattr(config, field.name)) for field in dataclasses.fields(config)}


def identity_of(config: Any) -> dict[str, Any]:
    """The fields marked `identity=True`, as plain types: what decides the job's result."""
    values = to_dict(config)
    return {field.name: values[field.name] for field in dataclasses.fields(config) if field.metadata.get("identity")}


def plain(value: Any) -> Any:
    if isinstance(value, Resolution):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def format_value(value: Any) -> str:
    """How a default is shown in --help: resolutions and lists comma-separated."""
    if isinstance(value, (list, tuple)) and not isinstance(value, Resolution):
        return ",".join(str(v) for v in value)
    return str(value)


def _default(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def _parser_for(kind: Any) -> Callable[[str], Any]:
    """The parser of a field's type; for `X | None`, X's."""
    kinds = [k for k in (kind, *typing.get_args(kind)) if k is not type(None)]
    for known in (Resolution, int, float, str):
        if known in kinds:
            return Resolution.parse if known is Resolution else known
    return str


def from_dict(cls: type[T], values: dict[str, Any]) -> T:
    """Inverse of `to_dict` for a config class: resolutions parsed back from "HxW"."""
    types = typing.get_type_hints(cls)
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
    return cls(**{name: _typed(types[name], value) for name, value in values.items()})


def _typed(kind: Any, value: Any) -> Any:
    if isinstance(value, str) and Resolution in (kind, *typing.get_args(kind)):
        return Resolution.parse(value)
    if dataclasses.is_dataclass(kind) and isinstance(value, dict):
        return from_dict(kind, value)
    return value
