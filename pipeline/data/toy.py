"""A toy street-scene data set in the Cityscapes layout, drawn procedurally and deterministically,
and small block-drawn toys in the ADE20K and COCO-Stuff layouts (`generate_layout_toy`).

    python -m pipeline.data.toy --out work/toy --train 24 --val 6 --size 256x512 --preview work/toy.png

Each scene is a street seen from a car: sky (day blue or dusk orange), buildings with
window grids (lit at dusk), trees, a road in perspective with lane marks, sidewalks with
tiles, grass, poles with signs or traffic lights, cars of several colours, people, and
sometimes the ego vehicle's hood. Classes have several looks (car colours, facade colours,
day and dusk), so a diversity loss has modes to find. Lighting, horizon, vanishing point
and object placement vary per scene.

Files, named like Cityscapes (`<city>_<seq>_<frame>`):
  leftImg8bit/<split>/<city>/<name>_leftImg8bit.png        RGB photo
  gtFine/<split>/<city>/<name>_gtFine_labelIds.png         8-bit Cityscapes label ids
  gtFine/<split>/<city>/<name>_gtFine_color.png            RGBA Cityscapes colours
Scene i of a split depends only on (seed, split, i): drawing is vectorised numpy, a few
tens of milliseconds for 256x512.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from crn.resolution import parse_resolutions
from pipeline.data.cityscapes import LABEL_BY_NAME, LABELS
from pipeline.options import from_argv, non_negative, option
from pipeline.runtime import entrypoint

ID = {name: label.id for name, label in LABEL_BY_NAME.items()}
COLOR_BY_ID = np.zeros((256, 3), dtype=np.uint8)
for _label in LABELS:
    if _label.id >= 0:
        COLOR_BY_ID[_label.id] = _label.color

CITIES = {"train": ("toyville", "pixelburg", "raystadt"), "val": ("valmont",)}
SPLIT_CODES = {"train": 0, "val": 1}

FACADE_COLORS = np.array([[150, 140, 130], [185, 172, 150], [128, 88, 72], [205, 198, 188],
                          [112, 112, 124], [168, 124, 92], [96, 104, 96]], dtype=np.float32)
CAR_COLORS = np.array([[178, 28, 30], [36, 68, 160], [228, 228, 226], [28, 28, 34], [160, 164, 170],
                       [222, 188, 40], [36, 108, 70], [120, 40, 120]], dtype=np.float32)
CLOTH_COLORS = np.array([[40, 40, 60], [190, 40, 40], [230, 230, 230], [60, 90, 160], [90, 70, 50],
                         [30, 30, 30], [200, 160, 60]], dtype=np.float32)
SKIN_COLORS = np.array([[236, 196, 160], [198, 140, 100], [140, 90, 60], [90, 60, 40]], dtype=np.float32)


def smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a coarse random grid, bilinearly enlarged."""
    coarse = rng.standard_normal((height // cell + 2, width // cell + 2)).astype(np.float32)
    image = Image.fromarray(coarse, mode="F").resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(image) / 1.5


class Canvas:
    """A photo (float RGB) and a label-id map drawn together, one class region at a time."""

    def __init__(self, height: int, width: int):
        self.photo = np.zeros((height, width, 3), dtype=np.float32)
        self.ids = np.zeros((height, width), dtype=np.uint8)

    def paint(self, mask: np.ndarray, label: str, color, box=None) -> None:
        """Paint `color` (RGB, or an image [..., 3] over the box) where `mask` is true."""
        region = (slice(None), slice(None)) if box is None else (slice(box[0], box[1]), slice(box[2], box[3]))
        mask = np.asarray(mask, dtype=bool)
        np.copyto(self.photo[region], np.asarray(color, dtype=np.float32), where=mask[..., None])
        np.copyto(self.ids[region], np.uint8(ID[label]), where=mask)


def render_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One street scene: (photo uint8 [H, W, 3], Cityscapes label ids uint8 [H, W])."""
    H, W = height, width
    canvas = Canvas(H, W)
    dusk = rng.random() < 0.4
    horizon = H * rng.uniform(0.36, 0.5)
    vanish_x = W * rng.uniform(0.38, 0.62)
    road_slope = rng.uniform(1.2, 2.0)  # road half-width per row below the horizon
    walk_slope = road_slope * rng.uniform(1.5, 2.0)  # outer edge of the sidewalks
    grass_slope = walk_slope * rng.uniform(1.15, 1.5) if rng.random() < 0.4 else walk_slope
    y = np.arange(H, dtype=np.float32)[:, None]
    x = np.arange(W, dtype=np.float32)[None, :]
    depth = y - horizon  # rows below the horizon: grows towards the viewer
    side = np.abs(x - vanish_x)  # distance from the vanishing point's column
    near = np.maximum(depth, 0.5)
    grain = rng.standard_normal((H, W, 1), dtype=np.float32)
    texture = smooth_noise(rng, H, W, max(2, H // 24))[..., None]

    # Sky: a vertical gradient, blue by day, orange to violet at dusk.
    top, bottom = ([[62, 52, 112], [250, 150, 80]] if dusk else [[58, 108, 192], [176, 204, 236]])
    t = np.clip(y / max(horizon, 1.0), 0, 1)[..., None]
    sky = (1 - t) * np.float32(top) + t * np.float32(bottom) + 3 * texture
    canvas.paint(np.ones((H, W), bool), "sky", np.broadcast_to(sky, (H, W, 3)))

    # Facades and trees along the street: segments of the x axis, each with its roof height.
    facade_zone = depth < side / grass_slope
    trees = np.zeros((H, W), bool)
    x0 = 0
    while x0 < W:
        x1 = min(W, x0 + max(1, int(W * rng.uniform(0.05, 0.16))))
        reach = (abs((x0 + x1) / 2 - vanish_x) / (W / 2)) ** 0.8  # 0 far away, 1 at the edges
        zone = facade_zone[:, x0:x1]
        if rng.random() < 0.75:
            roof = horizon - H * (0.06 + rng.uniform(0.15, 0.6) * reach)
            _draw_facade(canvas, rng, zone & (y > roof), reach, dusk, x0)
        else:
            bumps = np.sin(x[:, x0:x1] * rng.uniform(0.15, 0.4) + rng.uniform(0, 6)) * H * 0.03
            crown = horizon - H * (0.05 + rng.uniform(0.1, 0.35) * reach) + bumps
            trees[:, x0:x1] = zone & (y > crown)
        x0 = x1
    leaves = np.float32([58, 98, 40]) * rng.uniform(0.8, 1.2) + 30 * texture + 14 * grain
    canvas.paint(trees, "vegetation", leaves)

    # Ground: grass strip, sidewalks with tiles, road with a dashed centre line.
    below = depth > 0
    grass = np.float32([104, 148, 66]) + 18 * texture + 10 * grain
    canvas.paint(below & (side >= walk_slope * depth) & ~facade_zone, "terrain", np.broadcast_to(grass, (H, W, 3)))
    walk_tone = rng.uniform(150, 195)
    tile_lines = (np.modf(H * 0.8 / near)[0] < 0.08) | (np.modf(side / near * 3)[0] < 0.05)
    walk = np.float32([walk_tone, walk_tone * 0.97, walk_tone * 0.92]) - 28 * tile_lines[..., None] + 6 * grain
    canvas.paint(below & (side >= road_slope * depth) & (side < walk_slope * depth), "sidewalk", walk)
    asphalt = rng.uniform(68, 108)
    dashes = (side < 0.035 * depth) & (np.modf(H * 1.6 / near)[0] < 0.5)
    road = np.float32([asphalt] * 3) + 10 * texture + 7 * grain + 150 * dashes[..., None]
    canvas.paint(below & (side < road_slope * depth), "road", road)

    # Things, far to near so that nearer ones cover farther ones.
    things = []
    for _ in range(rng.integers(2, 7)):
        things.append((rng.uniform(0.05, 0.8) * (H - horizon), "car"))
    for _ in range(rng.integers(1, 5)):
        things.append((rng.uniform(0.1, 0.9) * (H - horizon), "person"))
    for _ in range(rng.integers(2, 5)):
        things.append((rng.uniform(0.1, 0.9) * (H - horizon), "pole"))
    for d, kind in sorted(things, key=lambda item: item[0]):
        base = horizon + d
        if kind == "car":
            _draw_car(canvas, rng, base, vanish_x + rng.uniform(-0.65, 0.65) * road_slope * d, road_slope * d * 0.85)
        elif kind == "person":
            offset = rng.uniform(road_slope, walk_slope) * d * rng.choice([-1, 1])
            _draw_person(canvas, rng, base, vanish_x + offset, road_slope * d * 0.9)
        else:
            offset = (road_slope + 0.15 * (walk_slope - road_slope)) * d * rng.choice([-1, 1])
            _draw_pole(canvas, rng, base, vanish_x + offset, road_slope * d * 2.0, dusk)

    if rng.random() < 0.5:  # the hood of our own car, void in Cityscapes
        hood_top = H * rng.uniform(0.88, 0.95) + 0.02 * H * ((x - W / 2) / (W / 2)) ** 2
        hood = np.float32([46, 48, 54]) + 40 * np.clip(1 - np.abs(x - W / 2) / W, 0, 1)[..., None] + 0 * y[..., None]
        canvas.paint(np.broadcast_to(y > hood_top, (H, W)), "ego vehicle", np.broadcast_to(hood, (H, W, 3)))

    # Light: a per-scene exposure, warm and dim at dusk (the sky keeps its own colours).
    exposure = rng.uniform(0.85, 1.15)
    light = np.float32([1.0, 0.82, 0.7]) * rng.uniform(0.6, 0.8) if dusk else np.float32([1.0, 1.0, 1.0])
    lit = (canvas.ids != ID["sky"])[..., None]
    canvas.photo *= np.where(lit, light * exposure, np.float32(1.0)).astype(np.float32)
    canvas.photo += 3 * grain
    return np.clip(canvas.photo, 0, 255).astype(np.uint8), canvas.ids


def _draw_facade(canvas: Canvas, rng, mask: np.ndarray, reach: float, dusk: bool, x0: int) -> None:
    """A facade over columns x0.. where `mask` (rows x its columns) is true: windows in a grid."""
    H = canvas.ids.shape[0]
    rows = np.nonzero(mask.any(axis=1))[0]
    if len(rows) == 0:
        return
    box = (rows[0], rows[-1] + 1, x0, x0 + mask.shape[1])
    sub = mask[box[0]:box[1]]
    yy = np.arange(box[0], box[1], dtype=np.float32)[:, None]
    xx = np.arange(box[3] - box[2], dtype=np.float32)[None, :]
    period = max(3.0, H * (0.02 + 0.05 * reach))  # nearer facades show bigger windows
    cell_y, cell_x = np.floor(yy / period), np.floor(xx / period)
    in_window = (np.modf(yy / period)[0] > 0.35) & (np.modf(xx / period)[0] > 0.3)
    lit = ((cell_y * 7 + cell_x * 13) % 5 < 2) & dusk
    base = FACADE_COLORS[rng.integers(len(FACADE_COLORS))] * rng.uniform(0.85, 1.1)
    glass = np.where(lit[..., None], np.float32([255, 214, 130]), np.float32([58, 66, 84]))
    noise = rng.standard_normal(sub.shape + (1,), dtype=np.float32) * 5
    canvas.paint(sub, "building", np.where(in_window[..., None], glass, base) + noise, box)


def _box(canvas: Canvas, top: float, bottom: float, left: float, right: float):
    """Clip a float box to the canvas: (row0, row1, col0, col1) or None if empty."""
    H, W = canvas.ids.shape
    r0, r1 = int(max(0, round(top))), int(min(H, round(bottom)))
    c0, c1 = int(max(0, round(left))), int(min(W, round(right)))
    return (r0, r1, c0, c1) if r0 < r1 and c0 < c1 else None


def _fill(canvas: Canvas, label: str, color, top, bottom, left, right) -> None:
    box = _box(canvas, top, bottom, left, right)
    if box is not None:
        canvas.paint(np.ones((box[1] - box[0], box[3] - box[2]), bool), label, color, box)


def _draw_car(canvas: Canvas, rng, base: float, center: float, width: float) -> None:
    width = max(width, 3.0)
    height = width * rng.uniform(0.7, 0.85)
    body = CAR_COLORS[rng.integers(len(CAR_COLORS))]
    left, right, top = center - width / 2, center + width / 2, base - height
    _fill(canvas, "car", body, top + 0.4 * height, base - 0.1 * height, left, right)  # body
    _fill(canvas, "car", body * 0.9, top, top + 0.4 * height, left + 0.15 * width, right - 0.15 * width)  # cabin
    _fill(canvas, "car", [44, 54, 66], top + 0.08 * height, top + 0.38 * height, left + 0.2 * width, right - 0.2 * width)
    _fill(canvas, "car", [18, 18, 18], base - 0.18 * height, base, left + 0.05 * width, left + 0.3 * width)  # wheels
    _fill(canvas, "car", [18, 18, 18], base - 0.18 * height, base, right - 0.3 * width, right - 0.05 * width)
    _fill(canvas, "car", [240, 230, 190], top + 0.5 * height, top + 0.6 * height, left, left + 0.12 * width)  # lights
    _fill(canvas, "car", [240, 230, 190], top + 0.5 * height, top + 0.6 * height, right - 0.12 * width, right)


def _draw_person(canvas: Canvas, rng, base: float, center: float, height: float) -> None:
    height = max(height, 4.0)
    width = height * 0.28
    shirt = CLOTH_COLORS[rng.integers(len(CLOTH_COLORS))]
    trousers = CLOTH_COLORS[rng.integers(len(CLOTH_COLORS))]
    skin = SKIN_COLORS[rng.integers(len(SKIN_COLORS))]
    top = base - height
    _fill(canvas, "person", trousers, base - 0.48 * height, base, center - 0.4 * width, center + 0.4 * width)
    _fill(canvas, "person", shirt, top + 0.17 * height, base - 0.46 * height, center - width / 2, center + width / 2)
    box = _box(canvas, top, top + 0.17 * height, center - 0.3 * width, center + 0.3 * width)
    if box is not None:  # an elliptical head
        yy = (np.arange(box[0], box[1])[:, None] + 0.5 - (top + 0.085 * height)) / (0.085 * height)
        xx = (np.arange(box[2], box[3])[None, :] + 0.5 - center) / (0.3 * width)
        canvas.paint(yy ** 2 + xx ** 2 <= 1.0, "person", skin, box)


def _draw_pole(canvas: Canvas, rng, base: float, center: float, height: float, dusk: bool) -> None:
    height = max(height, 6.0)
    thick = max(1.0, height * 0.025)
    top = base - height
    _fill(canvas, "pole", [72, 72, 78], top, base, center - thick / 2, center + thick / 2)
    size = height * 0.14
    kind = rng.integers(3)
    if kind == 0:  # a sign: blue, red or yellow panel
        panel = [[30, 80, 170], [200, 30, 40], [235, 200, 40]][rng.integers(3)]
        _fill(canvas, "traffic sign", panel, top, top + size, center - size / 2, center + size / 2)
        _fill(canvas, "traffic sign", [240, 240, 240], top + size * 0.35, top + size * 0.65,
              center - size * 0.3, center + size * 0.3)
    elif kind == 1:  # a traffic light: dark housing with one lamp on
        _fill(canvas, "traffic light", [26, 26, 28], top, top + size * 1.6, center - size * 0.3, center + size * 0.3)
        lamp = [[230, 40, 30], [250, 180, 30], [40, 220, 90]][rng.integers(3)]
        row = top + size * (0.1 + 0.5 * rng.integers(3))
        _fill(canvas, "traffic light", lamp, row, row + size * 0.4, center - size * 0.18, center + size * 0.18)
    # kind 2: a bare pole


def scene_name(split: str, index: int) -> tuple[str, str]:
    cities = CITIES.get(split, (f"{split}town",))
    city = cities[index % len(cities)]
    return city, f"{city}_{index:06d}_000019"


def generate_toy_dataset(
    root: str | Path,
    num_train: int,
    num_val: int,
    seed: int,
    size: tuple[int, int] = (256, 512),
) -> dict[str, list[str]]:
    """Write `num_train` + `num_val` scenes of `size` (H, W) under `root`; return the sample
    ids written per split. The same arguments always write the same files."""
    root = Path(root)
    height, width = size
    written: dict[str, list[str]] = {}
    for split, count in (("train", num_train), ("val", num_val)):
        written[split] = []
        for index in range(count):
            city, name = scene_name(split, index)
            rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
            photo, ids = render_scene(rng, height, width)
            photo_dir = root / "leftImg8bit" / split / city
            label_dir = root / "gtFine" / split / city
            photo_dir.mkdir(parents=True, exist_ok=True)
            label_dir.mkdir(parents=True, exist_ok=True)
            # compress_level=1: fast to write; decoding costs the same as for Cityscapes' PNGs.
            Image.fromarray(photo).save(photo_dir / f"{name}_leftImg8bit.png", compress_level=1)
            Image.fromarray(ids).save(label_dir / f"{name}_gtFine_labelIds.png", compress_level=1)
            rgba = np.concatenate([COLOR_BY_ID[ids], np.full(ids.shape + (1,), 255, np.uint8)], axis=-1)
            Image.fromarray(rgba).save(label_dir / f"{name}_gtFine_color.png", compress_level=1)
            written[split].append(name)
    return written


# ---- the other layouts: ADE20K and COCO-Stuff, JPEG photos of mixed sizes and aspects ----

# (height, width) of the toy photos, cycled: landscape, portrait, wide, square, small.
LAYOUT_SIZES = ((48, 64), (64, 48), (40, 100), (56, 56), (24, 32))


def layout_paths(layout: str, split: str, name: str) -> tuple[str, str]:
    """(photo, label) paths of one sample, relative to the data set's root, in `layout`."""
    if layout == "ade20k":
        folder = {"train": "training", "val": "validation"}[split]
        return f"images/{folder}/{name}.jpg", f"annotations/{folder}/{name}.png"
    if layout == "coco-stuff":
        return f"{split}2017/{name}.jpg", f"stuffthingmaps_trainval2017/{split}2017/{name}.png"
    raise ValueError(f"no toy layout {layout!r} (ade20k or coco-stuff)")


def layout_name(layout: str, split: str, index: int) -> str:
    if layout == "ade20k":
        return f"ADE_{split}_{index + 1:08d}"
    return f"{SPLIT_CODES[split] * 500000 + index + 1:012d}"


def render_blocks(rng: np.random.Generator, height: int, width: int, ids: np.ndarray,
                  colors: dict[int, tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """A background class with a few rectangles of others: (photo uint8 [H, W, 3], ids uint8 [H, W])."""
    label = np.full((height, width), rng.choice(ids), dtype=np.uint8)
    for _ in range(4):
        top, left = int(rng.integers(0, height - 4)), int(rng.integers(0, width - 4))
        bottom = top + int(rng.integers(4, height // 2 + 5))
        right = left + int(rng.integers(4, width // 2 + 5))
        label[top:bottom, left:right] = rng.choice(ids)
    table = np.zeros((256, 3), dtype=np.float32)
    for value, color in colors.items():
        table[value] = color
    photo = table[label] + rng.normal(0, 6, (height, width, 3))
    return np.clip(photo, 0, 255).astype(np.uint8), label


def generate_layout_toy(root: str | Path, layout: str, num_train: int, num_val: int, seed: int = 0,
                        sizes: tuple[tuple[int, int], ...] = LAYOUT_SIZES) -> dict[str, list[str]]:
    """A few samples in the ADE20K or COCO-Stuff layout (`layout`: "ade20k" or "coco-stuff"):
    JPEG photos, one-channel label PNGs with the data set's ids, sizes cycling through `sizes`.
    Returns the sample ids written per split; the same arguments write the same files."""
    from pipeline.data.schema import load_schema

    schema = load_schema(layout)
    colors = {cls.ids[0]: (cls.colors or ((128, 128, 128),))[0] for cls in schema.classes}
    ids = np.array(sorted(colors), dtype=np.uint8)
    root = Path(root)
    written: dict[str, list[str]] = {}
    for split, count in (("train", num_train), ("val", num_val)):
        written[split] = []
        for index in range(count):
            rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
            height, width = sizes[index % len(sizes)]
            photo, label = render_blocks(rng, height, width, ids, colors)
            name = layout_name(layout, split, index)
            photo_path, label_path = (root / p for p in layout_paths(layout, split, name))
            photo_path.parent.mkdir(parents=True, exist_ok=True)
            label_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(photo).save(photo_path, quality=92)
            Image.fromarray(label).save(label_path)
            written[split].append(name)
    return written


def _scene_size(text: str) -> str:
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts) or int(parts[1]) != 2 * int(parts[0]):
        raise ValueError(f"'{text}' is not HxW with W = 2H, e.g. 256x512")
    return text.lower()


def make_toy_store(store: str | Path, source: str | Path, *, num_train: int, num_val: int,
                   size: tuple[int, int], resolutions: str, splits: str = "", seed: int = 0) -> Path:
    """The toy data set at `source` (drawn unless already there) preprocessed into `store`
    by the real job (pipeline.preprocessing.job, on the running or a new local Ray instance).

    The one toy-store builder of the tests, the benchmarks and the demo. Returns `store`.
    """
    from pipeline.preprocessing.config import PreprocessConfig
    from pipeline.preprocessing.job import run

    source, store = Path(source), Path(store)
    if not (source / "leftImg8bit").exists():
        generate_toy_dataset(source, num_train=num_train, num_val=num_val, seed=seed, size=size)
    run(PreprocessConfig(source=str(source), out=str(store), resolutions=parse_resolutions(resolutions),
                         splits=[s.strip() for s in splits.split(",") if s.strip()]))
    return store


def preview(root: str | Path, out: str | Path, count: int = 4) -> Path:
    """A contact sheet: photos on the left, colour labels on the right, `count` scenes."""
    root = Path(root)
    photos = sorted((root / "leftImg8bit").glob("*/*/*_leftImg8bit.png"))[:count]
    rows = []
    for photo_path in photos:
        name = photo_path.name[: -len("_leftImg8bit.png")]
        label_path = next((root / "gtFine").glob(f"*/*/{name}_gtFine_color.png"))
        photo = np.asarray(Image.open(photo_path).convert("RGB"))
        label = np.asarray(Image.open(label_path).convert("RGB"))
        rows.append(np.concatenate([photo, label], axis=1))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(out)
    return Path(out)


@dataclass
class ToyConfig:
    out: str = option(help="folder to write the data set into")
    train: int = option(24, "number of training scenes", check=non_negative)
    val: int = option(6, "number of validation scenes", check=non_negative)
    seed: int = option(0, "seed: the same seed writes the same files")
    size: str = option("256x512", "scene size HxW (any size with W = 2H)", parse=_scene_size)
    preview: str = option("", "also write a contact sheet PNG of a few scenes here")
    layout: str = option("cityscapes", "cityscapes: street scenes of --size; ade20k or coco-stuff: small block "
                                       "scenes in that layout, JPEG photos of mixed sizes (no --size, no --preview)",
                         choices=("cityscapes", "ade20k", "coco-stuff"))


def main(argv: list[str] | None = None) -> int:
    args = from_argv(ToyConfig, argv, prog="python -m pipeline.data.toy", description=__doc__.split("\n\n")[0])
    if args.layout != "cityscapes":
        written = generate_layout_toy(args.out, args.layout, args.train, args.val, args.seed)
        print(f"wrote {len(written['train'])} train + {len(written['val'])} val {args.layout} samples to {args.out}")
        return 0
    height, width = (int(v) for v in args.size.split("x"))
    written = generate_toy_dataset(args.out, args.train, args.val, args.seed, (height, width))
    print(f"wrote {len(written['train'])} train + {len(written['val'])} val scenes of {height}x{width} to {args.out}")
    if args.preview:
        print(f"preview: {preview(args.out, args.preview)}")
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint(main)(sys.argv[1:]))
