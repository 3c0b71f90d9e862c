"""Data-set layouts as small objects in one registry: what `--format` of jobs/preprocess.py names.

A format says how to find the (label, photo) pairs of one split of a data set, by paths
only (pipeline.data.sources does the listing and the rejects), and what to assume about
it when the user does not say: the label type, the splits, the label schema, and whether
its images come in many sizes and aspects (then each is centre-cropped to the store's
aspect and enlarged when small, pipeline.data.prepare, rather than rejected).

Adding a format is one file in this package that calls `register_format(Format(...))` and
one import line at the end of this file (docs/data-formats.md#adding-a-format). Code
elsewhere may register its own format the same way before the job parses `--format`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from pipeline.data.schema import LabelSchema
    from pipeline.data.sources import Scanner

# How a format's label PNGs are read: schema ids in one channel, schema colours, or (auto)
# decided for each file from its own mode and palette (pipeline.data.prepare.label_type_of).
LABEL_TYPES = ("auto", "ids", "color")
SMALL_IMAGE_POLICIES = ("reject", "enlarge")


@dataclass(frozen=True)
class Format:
    name: str
    # Lists one split's files and pairs them: scan_split(scanner, split, label_type), adding
    # candidates and rejects to the scanner; a split that is not there raises SourceError.
    scan_split: Callable[["Scanner", str, str], None]
    label_type: str = "ids"  # the default label type
    splits: tuple[str, ...] = ("train", "val")  # the default splits
    schema: str = "cityscapes"  # the default label schema's name
    # Builds the schema named `schema` when the format brings its own (None: a schema defined elsewhere).
    build_schema: Callable[[], "LabelSchema"] | None = None
    has_photos: bool = True
    label_types: tuple[str, ...] = LABEL_TYPES  # the label types its layout can hold
    # Images of any size and aspect: centre-crop to the store's 1:2 and enlarge small ones.
    varied_sizes: bool = False
    # find_splits(scanner, requested or None) -> the splits to read, for layouts that discover
    # them; None: the requested ones, else `splits`.
    find_splits: Callable[["Scanner", list[str] | None], list[str]] | None = None
    summary: str = ""  # one line for --help and docs


FORMATS: dict[str, Format] = {}


def register_format(fmt: Format) -> Format:
    """Add `fmt` to the registry (replacing one of the same name); returns it."""
    unknown = set(fmt.label_types) - set(LABEL_TYPES)
    if unknown or fmt.label_type not in fmt.label_types:
        raise ValueError(f"format {fmt.name!r}: label types must be among {LABEL_TYPES} and include its default")
    FORMATS[fmt.name] = fmt
    return fmt


def get_format(name: str) -> Format:
    """The registered format `name`; SourceError (one line) naming the known ones otherwise."""
    if name not in FORMATS:
        from pipeline.data.sources import SourceError

        raise SourceError(f"unknown source format '{name}' (one of: {', '.join(FORMATS)})")
    return FORMATS[name]


def check_format(name: str) -> None:
    """An option check for `--format`: the registry is read when the flag is parsed."""
    if name not in FORMATS:
        raise ValueError(f"'{name}' is not a source format (one of: {', '.join(FORMATS)})")


# The built-in formats: one line each.
from pipeline.data.formats import cityscapes, folders, ade20k, coco_stuff  # noqa: E402,F401
