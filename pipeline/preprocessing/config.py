"""The preprocessing job's configuration: one dataclass whose fields are the command line's flags."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

from crn.resolution import Resolution, parse_resolutions
from pipeline.data.prepare import (
    DEFAULT_MAX_UNKNOWN_FRACTION,
    DEFAULT_UNKNOWN_LABELS,
    PHOTO_TONES,
    UNKNOWN_LABEL_POLICIES,
)
from pipeline.data.shards import rows_per_file_for
from pipeline.data.sources import DEFAULT_LABEL_TYPE, FORMATS, LABEL_TYPES
from pipeline.options import at_least, dry_run_option, experiment_option, from_argv, one_of, option

DEFAULT_RESOLUTIONS = "64x128,128x256,256x512"


def _split_list(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def fraction(value: float) -> None:
    if not 0 <= value <= 1:
        raise ValueError(f"must be a fraction in 0..1, got {value}")


@dataclass
class PreprocessConfig:
    source: str = option(help="source data set: a folder or an s3://bucket/prefix")
    out: str = option(help="where the store goes: a folder or an s3://bucket/prefix")
    format: str = option("cityscapes", "source layout: cityscapes (leftImg8bit/ + gtFine/), gta5 or paired "
                                       "(images/ + labels/), labels-only (label PNGs, for synthesis)", choices=FORMATS)
    label_type: str = option("", "labels as single-channel ids or RGB colours; default: the format's usual "
                                 "(ids, but color for gta5)", check=one_of(*LABEL_TYPES))
    schema: str = option("cityscapes", "label schema: a built-in name (cityscapes) or a schema JSON file")
    resolutions: tuple[Resolution, ...] = option(parse_resolutions(DEFAULT_RESOLUTIONS),
                                                 "comma-separated HxW sizes to store, each h x 2h with h = 4 * 2^n",
                                                 parse=parse_resolutions)
    splits: list[str] = option([], "comma-separated splits to read; default: train,val for cityscapes, the "
                                   "<split>/ folders found (else one split 'train') for the others", parse=_split_list)
    crop_to_aspect: bool = option(False, "centre-crop images that are not 1:2 (e.g. GTA5's 1052x1914) instead of "
                                         "rejecting them")
    unknown_labels: str = option("", "label ids / colours the schema lacks: void (stored as void, counted per sample "
                                     "in the manifest) or reject (the whole map); default: void for colour labels, "
                                     "as the authors read them, reject for ids", check=one_of(*UNKNOWN_LABEL_POLICIES))
    max_unknown_fraction: float = option(DEFAULT_MAX_UNKNOWN_FRACTION, "with --unknown-labels void, a map with more "
                                         "than this fraction of unknown pixels is still rejected (a wrong schema)",
                                         check=fraction)
    photo_tone: str = option("plain", "photographs as they are, or vivid: the authors' tone mapping of the targets "
                                      "of their 512p and 1024p models, applied at each resolution", choices=PHOTO_TONES)
    rows_per_file: int = option(0, "samples per Parquet part; 0 = about 32 MiB of raw pixels per part",
                                check=at_least(0))
    experiment: str = experiment_option("crn-preprocess")
    dry_run: bool = dry_run_option()

    def store_settings(self) -> dict:
        """The settings that decide the store's content (so: its data folder's key)."""
        return {
            "format": self.format,
            "label_type": self.label_type,
            "resolutions": [str(r) for r in self.resolutions],
            "crop_to_aspect": self.crop_to_aspect,
            "rows_per_file": self.rows_per_file,
            "unknown_labels": self.unknown_labels,
            "max_unknown_fraction": self.max_unknown_fraction,
            "photo_tone": self.photo_tone,
        }


def parse_preprocess_config(argv: Sequence[str] | None) -> PreprocessConfig:
    config = from_argv(PreprocessConfig, argv, prog="jobs/preprocess.py",
                       description="Preprocess a labelled data set into a multi-resolution Parquet store.")
    return resolve(config)


def resolve(config: PreprocessConfig) -> PreprocessConfig:
    """The format's usual label type, unknown-label policy and part size filled in."""
    label_type = config.label_type or DEFAULT_LABEL_TYPE[config.format]
    return dataclasses.replace(
        config,
        label_type=label_type,
        unknown_labels=config.unknown_labels or DEFAULT_UNKNOWN_LABELS[label_type],
        rows_per_file=config.rows_per_file or rows_per_file_for(config.resolutions, config.format != "labels-only"),
    )


