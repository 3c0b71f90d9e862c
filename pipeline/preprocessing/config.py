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
from pipeline.data.formats import FORMATS, LABEL_TYPES, SMALL_IMAGE_POLICIES, check_format
from pipeline.errors import UserError
from pipeline.options import at_least, dry_run_option, experiment_option, from_argv, one_of, option
from pipeline.runtime import lasting_output

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
                                       "(images/ + labels/), labels-only (label PNGs, for synthesis), ade20k "
                                       "(ADEChallengeData2016), coco-stuff (COCO 2017 + stuffthingmaps); "
                                       "docs/data-formats.md", check=check_format)
    label_type: str = option("", "labels as single-channel ids, RGB colours, or auto (each file's mode and palette "
                                 "decide); default: the format's usual (ids, but color for gta5)",
                             check=one_of(*LABEL_TYPES))
    schema: str = option("", "label schema: a built-in name (cityscapes, ade20k, coco-stuff) or a schema JSON file; "
                             "default: the format's (cityscapes for cityscapes, gta5, paired, labels-only)")
    resolutions: tuple[Resolution, ...] = option(parse_resolutions(DEFAULT_RESOLUTIONS),
                                                 "comma-separated HxW sizes to store, each h x 2h with h = 4 * 2^n",
                                                 parse=parse_resolutions)
    splits: list[str] = option([], "comma-separated splits to read; default: train,val for cityscapes, the "
                                   "<split>/ folders found (else one split 'train') for the others", parse=_split_list)
    crop_to_aspect: bool = option(False, "centre-crop images that are not 1:2 (e.g. GTA5's 1052x1914) instead of "
                                         "rejecting them; always on for ade20k and coco-stuff")
    small_images: str = option("", "images smaller than the top resolution (after the crop): reject, or enlarge "
                                   "(photo bicubic, label nearest); default: enlarge for ade20k and coco-stuff, "
                                   "whose sizes vary, reject for the others", check=one_of(*SMALL_IMAGE_POLICIES))
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
            # Only when on, so that stores made before the option keep their keys.
            **({"small_images": self.small_images} if self.small_images == "enlarge" else {}),
        }


def parse_preprocess_config(argv: Sequence[str] | None) -> PreprocessConfig:
    config = from_argv(PreprocessConfig, argv, prog="jobs/preprocess.py",
                       description="Preprocess a labelled data set into a multi-resolution Parquet store.")
    return resolve(config)


def resolve(config: PreprocessConfig) -> PreprocessConfig:
    """The format's usual label type, schema, size policy, unknown-label policy and part size filled in.

    With label type auto the unknown-label policy stays "" (each map's own type's default)
    unless named.
    """
    lasting_output(config.out, "--out")  # a submitted job's relative --out would vanish with the job
    if config.format not in FORMATS:
        raise UserError(f"--format: '{config.format}' is not a source format (one of: {', '.join(FORMATS)})")
    fmt = FORMATS[config.format]
    label_type = config.label_type or fmt.label_type
    if label_type not in fmt.label_types:
        raise UserError(f"--label-type {label_type} does not fit format '{fmt.name}' "
                        f"(one of: {', '.join(fmt.label_types)})")
    return dataclasses.replace(
        config,
        label_type=label_type,
        schema=config.schema or fmt.schema,
        crop_to_aspect=config.crop_to_aspect or fmt.varied_sizes,
        small_images=config.small_images or ("enlarge" if fmt.varied_sizes else "reject"),
        unknown_labels=config.unknown_labels or DEFAULT_UNKNOWN_LABELS.get(label_type, ""),
        rows_per_file=config.rows_per_file or rows_per_file_for(config.resolutions, fmt.has_photos),
    )


