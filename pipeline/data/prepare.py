"""One sample, source files to store rows: decode, validate, map classes, downsample.

Everything wrong with a sample raises `BadInput(path, reason)`; the caller turns it into a
reject and carries on with the next sample. The checks, in order:
  1. both files decode completely (a truncated PNG fails here), labels are PNG (lossless);
  2. label and photo have the same size;
  3. the aspect ratio is 1:2, or `crop_to_aspect` cuts the centre 1:2 window out of it;
  4. the (cropped) image is at least as large as the largest requested resolution, or
     (`enlarge_small`) it is brought up to it like any other size (below);
  5. every label id / colour is listed by the schema, or (`unknown_labels = "void"`) at most
     `max_unknown_fraction` of the map's pixels are not, and those become void. The default is
     the authors' reading: colour labels go through the palette and any other colour is void
     (helper.get_semantic_map: void = 1 - the sum of the palette channels); label ids stay
     strict. Above the fraction the map is rejected: that many unknown values means another
     schema, not a few stray pixels (a real GTA5 label has 17 pixels of (20, 20, 20)).

Downsampling, always from the (cropped) source image, never from another resolution:
- Labels: nearest neighbour by pixel centres. Output pixel (i, j) of an h x w map takes the
  source pixel (floor((2i+1) H / 2h), floor((2j+1) W / 2w)), the one under its centre
  (the same pixel Pillow's NEAREST picks). Nearest, not majority, because that is what the
  authors did (docs/model.md#input-labels), it never invents a class, and the network makes
  its own soft, area-averaged labels for its coarse levels from the top resolution.
- Photos: Pillow's `Image.resize(..., BICUBIC, reducing_gap=None)`. Pillow widens the
  bicubic kernel by the reduction factor, so this is bicubic with antialiasing, like the
  authors' resize; `reducing_gap=None` keeps it one exact pass.

Photo tone (`--photo-tone`): "plain" stores the downsampled photographs as they are; "vivid"
tone-maps each resolution's photograph as the authors did for their 512p and 1024p targets
(pipeline.data.vivid), after the resize, as their scripts did.

Centre crop to 1:2 (only when asked): keep height h' = min(H, W // 2) and width 2h', with
the window centred (top = (H - h') // 2, left = (W - 2h') // 2). GTA5's 1052x1914 becomes
the rows 47..1003 (957x1914).

Data sets of varied sizes and aspects (ADE20K, COCO-Stuff: docs/data-formats.md#sizes-and-aspects)
use both: the centre 1:2 window, then each resolution by the rules above, enlarging when the
window is smaller (the same formulas: nearest by pixel centres repeats label pixels, bicubic
interpolates the photo). That is "resize the short side to the store's size, then centre-crop
to its aspect" done in the other order, so that the photo is resampled once and the label's
pixels are picked from the source, never from a resized copy.

Label type `auto` reads each map's type off the file (`label_type_of`): one channel is ids, RGB
is colours, and a palette image is colours when its palette colours explain at least as many
pixels through the schema as its indices do as ids (a Cityscapes colour map saved as 'P'),
else ids (an id map stored with a display palette). The synthesis job (`--labels`) and the
serving endpoint use this one function.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import pyarrow.fs as pafs
from PIL import Image, UnidentifiedImageError

from crn.resolution import Resolution
from pipeline.data.schema import INVALID, LabelSchema

PHOTO_MODES = ("RGB", "RGBA", "L", "LA", "P", "PA", "CMYK", "YCbCr")
ID_LABEL_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L")
# The reason's first words, by which a job can add its own advice (preprocessing: --crop-to-aspect).
WRONG_ASPECT = "wrong aspect ratio"
COLOR_LABEL_MODES = ("RGB", "RGBA", "P", "PA")
# Modes that hold one value per pixel and no palette: always ids for label type auto.
ONE_CHANNEL_MODES = ("L", "I", "I;16", "I;16B", "I;16L", "1")
UNKNOWN_LABEL_POLICIES = ("void", "reject")
DEFAULT_UNKNOWN_LABELS = {"color": "void", "ids": "reject"}  # see the module docstring, check 5
DEFAULT_MAX_UNKNOWN_FRACTION = 0.01
PHOTO_TONES = ("plain", "vivid")


class BadInput(Exception):
    """A sample that cannot go into the store: `path` (user-facing) and a one-line `reason`."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class PrepareSettings:
    """What decides how a sample is prepared (plain types, so it travels to Ray workers)."""

    label_type: str  # "ids", "color" or "auto" (each file's own: label_type_of)
    schema: dict  # LabelSchema.to_dict()
    resolutions: tuple[Resolution, ...]  # smallest first
    crop_to_aspect: bool
    enlarge_small: bool = False  # a map smaller than the top resolution is enlarged, not rejected
    unknown_labels: str = ""  # "void" or "reject"; "" = the label type's default (each map's, with "auto")
    max_unknown_fraction: float = DEFAULT_MAX_UNKNOWN_FRACTION  # with "void": more is rejected
    photo_tone: str = "plain"  # one of PHOTO_TONES


@dataclass
class PreparedSample:
    sample_id: str
    split: str
    labels: dict[str, np.ndarray]  # "64x128" -> uint8 [64, 128] class indices
    photos: dict[str, np.ndarray] | None  # "64x128" -> uint8 [64, 128, 3]; None without photos
    class_pixels: np.ndarray  # int64 [num_classes]: pixel count per class at the top resolution
    unknown_pixels: int = 0  # source pixels whose id / colour the schema lacks, stored as void
    source_pixels: int = 0  # pixels of the (cropped) source label map
    label_type: str = ""  # "ids" or "color": how the label map was read


@dataclass
class MappedLabels:
    maps: dict[str, np.ndarray]  # "64x128" -> uint8 class indices
    unknown_pixels: int  # source pixels outside the schema, mapped to void
    label_type: str = ""  # "ids" or "color": how the map was read


class LabelMapper:
    """Source label image -> class indices at each resolution, with the schema's lookup
    tables built once.

    Nearest-neighbour downsampling picks source pixels, so it commutes with the per-pixel
    id -> class table: for 8-bit ids we check every pixel through the image's histogram
    (one pass in C), then downsample the ids and map only the pixels we keep. That gives
    the same maps as mapping first, for about half the work.
    """

    def __init__(self, schema: LabelSchema, label_type: str, unknown_labels: str = "",
                 max_unknown_fraction: float = DEFAULT_MAX_UNKNOWN_FRACTION):
        self.schema = schema
        self.label_type = label_type
        # Per kind of map, so that "auto" applies each type's default unless one is named.
        self.policy = {kind: unknown_labels or DEFAULT_UNKNOWN_LABELS[kind] for kind in ("ids", "color")}
        self.max_unknown_fraction = max_unknown_fraction
        self.id_table = schema.id_table()
        if self.policy["ids"] == "void":  # ids the schema lacks read as void
            self.id_table = np.where(self.id_table == INVALID, schema.void_index, self.id_table).astype(np.uint8)
            self.known_ids = schema.id_table() != INVALID
        else:
            self.known_ids = self.id_table != INVALID
        self.color_keys, self.color_classes = schema.color_table()

    def __call__(self, image: Image.Image, path: str, resolutions: tuple[Resolution, ...]) -> MappedLabels:
        kind = self.label_type if self.label_type != "auto" else self.label_type_of(image)
        if kind == "ids" and image.mode in ("L", "P"):
            unknown = self._check_8bit_ids(image, path)
            ids = np.asarray(image)
            return MappedLabels({str(r): np.take(self.id_table, downsample_label(ids, r)) for r in resolutions},
                                unknown, kind)
        mapper = self._from_ids if kind == "ids" else self._from_colors
        classes, unknown = mapper(image, path)
        return MappedLabels({str(r): downsample_label(classes, r) for r in resolutions}, unknown, kind)

    def label_type_of(self, image: Image.Image) -> str:
        """"ids" or "color" for one label image, from its mode and (palette images) its pixels.

        One channel ('L', 'I', 'I;16', '1') holds ids; RGB(A) holds colours; a palette
        image ('P') is colours when the schema knows at least as many of its pixels by
        their palette colour as by their index (module docstring). Any other mode reads as
        colours, whose check then names the mode.
        """
        if image.mode in ONE_CHANNEL_MODES:
            return "ids"
        if image.mode not in ("P", "PA"):
            return "color"
        counts = np.asarray(image.histogram()[:256], dtype=np.int64)
        palette = np.asarray(image.getpalette("RGB") or [], dtype=np.uint32).reshape(-1, 3)
        packed = (palette[:, 0] << 16) | (palette[:, 1] << 8) | palette[:, 2]
        known_colors = np.zeros(256, dtype=bool)
        if len(packed) and len(self.color_keys):
            position = np.searchsorted(self.color_keys, packed).clip(0, len(self.color_keys) - 1)
            known_colors[: len(packed)] = self.color_keys[position] == packed
        known_ids = self.known_ids[:256]  # the id table covers 0..255 at least
        return "color" if counts[known_colors].sum() >= counts[known_ids].sum() else "ids"

    def _check_8bit_ids(self, image: Image.Image, path: str) -> int:
        pixels_per_id = np.asarray(image.histogram())  # 256 counts, one per 8-bit id
        bad = (pixels_per_id > 0) & ~self.known_ids[:256]
        if bad.any():
            self._check_unknown(path, "ids", [str(v) for v in np.flatnonzero(bad)], int(pixels_per_id[bad].sum()),
                                image.width * image.height)
        return int(pixels_per_id[bad].sum())

    def _from_ids(self, image: Image.Image, path: str) -> tuple[np.ndarray, int]:
        if image.mode not in ID_LABEL_MODES:
            raise BadInput(path, f"label image is {image.mode}, but label type 'ids' needs one channel "
                                 "(use --label-type color for colour-coded labels)")
        # 16/32-bit ids: values past the table's end are outside the schema too
        ids = np.asarray(image).astype(np.int64)
        inside = (ids >= 0) & (ids < len(self.id_table))
        safe_ids = np.where(inside, ids, 0)
        classes = self.id_table[safe_ids]
        bad = ~inside | ~self.known_ids[safe_ids]
        if bad.any():
            self._check_unknown(path, "ids", [str(v) for v in np.unique(ids[bad])], int(bad.sum()), ids.size)
            classes[bad] = self.schema.void_index
        return classes, int(bad.sum())

    def _from_colors(self, image: Image.Image, path: str) -> tuple[np.ndarray, int]:
        if image.mode not in COLOR_LABEL_MODES:
            raise BadInput(path, f"label image is {image.mode}, but label type 'color' needs RGB "
                                 "(use --label-type ids for single-channel id labels)")
        rgb = np.asarray(image.convert("RGB")).astype(np.uint32)
        packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        position = np.searchsorted(self.color_keys, packed).clip(0, len(self.color_keys) - 1)
        known = self.color_keys[position] == packed
        classes = self.color_classes[position]
        if not known.all():
            values = [f"({v >> 16},{(v >> 8) & 255},{v & 255})" for v in np.unique(packed[~known])]
            self._check_unknown(path, "colours", values, int((~known).sum()), packed.size)
            classes[~known] = self.schema.void_index
        return classes, int((~known).sum())

    def _check_unknown(self, path: str, kind: str, values: list[str], pixels: int, total: int) -> None:
        """Reject the map unless unknown values may be void and there are few enough of them."""
        limit = 8 if kind == "ids" else 5
        shown = ", ".join(values[:limit]) + (", ..." if len(values) > limit else "")
        reason = f"label {kind} outside schema '{self.schema.name}': {shown} ({pixels} pixels)"
        if self.policy["ids" if kind == "ids" else "color"] == "reject":
            raise BadInput(path, reason)
        if pixels > self.max_unknown_fraction * total:
            raise BadInput(path, f"{reason[:-1]}, {100 * pixels / total:.2f}% of the map; more than "
                                 f"{100 * self.max_unknown_fraction:g}% is a wrong schema, not void)")


def decode_image(data: bytes, path: str, kind: str) -> Image.Image:
    """Decode every pixel now, so a truncated or corrupt file fails here, with its path.

    Pillow's own messages name an in-memory buffer ("<_io.BytesIO object at 0x...>") or
    only warn (a decompression bomb); each case becomes a reason a user can act on.
    """
    if not data:
        raise BadInput(path, f"empty {kind} file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Pillow warns above MAX_IMAGE_PIXELS and refuses above twice that: both are rejects.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise BadInput(path, f"{kind} image too large: its header claims more than "
                             f"{Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels") from None
    except UnidentifiedImageError:
        raise BadInput(path, f"{kind} is not an image file ({len(data)} bytes in no image format Pillow knows)") from None
    except Exception as exc:  # Pillow raises many types for bad files; all mean "unreadable"
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInput(path, f"unreadable {kind} image ({message})") from None
    return image


def centre_crop_box(height: int, width: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the centred 1:2 window (see the module docstring)."""
    new_height = min(height, width // 2)
    new_width = 2 * new_height
    top = (height - new_height) // 2
    left = (width - new_width) // 2
    return left, top, left + new_width, top + new_height


def nearest_indices(source: int, target: int) -> np.ndarray:
    """Source row (or column) under the centre of each target row: floor((2i+1) S / 2T)."""
    return ((2 * np.arange(target) + 1) * source) // (2 * target)


def downsample_label(classes: np.ndarray, resolution: Resolution) -> np.ndarray:
    height, width = resolution
    rows = nearest_indices(classes.shape[0], height)
    cols = nearest_indices(classes.shape[1], width)
    # Rows, then columns: two 1-D gathers cost a third of one broadcast 2-D index.
    return np.take(np.take(classes, rows, axis=0), cols, axis=1)


def downsample_photo(photo: Image.Image, resolution: Resolution) -> np.ndarray:
    """The photo at `resolution`: bicubic, antialiased when reducing (also enlarges: enlarge_small)."""
    height, width = resolution
    if photo.size == (width, height):
        return np.asarray(photo, dtype=np.uint8)
    resized = photo.resize((width, height), Image.Resampling.BICUBIC, reducing_gap=None)
    return np.asarray(resized, dtype=np.uint8)


class SamplePreparer:
    """Prepares samples of one source with fixed settings (tables built once per worker)."""

    def __init__(self, settings: PrepareSettings, source_fs: pafs.FileSystem, display):
        self.settings = settings
        self.schema = LabelSchema.from_dict(settings.schema)
        self.mapper = LabelMapper(self.schema, settings.label_type, settings.unknown_labels,
                                  settings.max_unknown_fraction)
        self.fs = source_fs
        self.display = display  # filesystem path -> the path a user recognises
        self.tone = _photo_tone(settings.photo_tone)

    def read(self, path: str) -> bytes:
        try:
            with self.fs.open_input_stream(path) as stream:
                return stream.read()
        except OSError as exc:
            raise BadInput(self.display(path), f"cannot read file ({str(exc).strip().splitlines()[0]})") from None

    def prepare(self, split: str, sample_id: str, label_path: str, photo_path: str | None) -> PreparedSample:
        label_name = self.display(label_path)
        label = decode_image(self.read(label_path), label_name, "label")
        if label.format != "PNG":
            raise BadInput(label_name, f"label is {label.format}, not PNG (lossy formats change class ids)")
        photo = None
        if photo_path is not None:
            photo_name = self.display(photo_path)
            photo = decode_image(self.read(photo_path), photo_name, "photo")
            if photo.mode not in PHOTO_MODES:
                raise BadInput(photo_name, f"photo mode {photo.mode} is not 8-bit colour or grey")
            if photo.size != label.size:
                raise BadInput(
                    label_name,
                    f"label {_size(label)} and photo {photo_name} {_size(photo)} differ in size",
                )

        width, height = label.size
        if width != 2 * height:
            if not self.settings.crop_to_aspect:
                raise BadInput(label_name, f"{WRONG_ASPECT}: {height}x{width} is not h x 2h")
            box = centre_crop_box(height, width)
            label = label.crop(box)
            photo = photo.crop(box) if photo is not None else None
            width, height = label.size

        top = self.settings.resolutions[-1]
        if height < top[0] and not self.settings.enlarge_small:
            raise BadInput(label_name, f"too small: {height}x{width} is smaller than the requested "
                                       f"resolution {str(top)}")

        mapped = self.mapper(label, label_name, self.settings.resolutions)
        labels = mapped.maps
        photos = None
        if photo is not None:
            photo_rgb = photo if photo.mode == "RGB" else photo.convert("RGB")
            photos = {str(r): self.tone(downsample_photo(photo_rgb, r)) for r in self.settings.resolutions}
        class_pixels = np.bincount(labels[str(top)].ravel(), minlength=self.schema.num_classes)
        return PreparedSample(sample_id, split, labels, photos, class_pixels.astype(np.int64),
                              unknown_pixels=mapped.unknown_pixels, source_pixels=width * height,
                              label_type=mapped.label_type)


def _photo_tone(name: str):
    """The function applied to each stored photograph (vivid's SciPy and scikit-image load only if used)."""
    if name == "plain":
        return lambda photo: photo
    if name == "vivid":
        from pipeline.data.vivid import vivid

        return vivid
    raise ValueError(f"unknown photo tone {name!r} (one of {', '.join(PHOTO_TONES)})")


def _size(image: Image.Image) -> str:
    width, height = image.size
    return f"{height}x{width}"
