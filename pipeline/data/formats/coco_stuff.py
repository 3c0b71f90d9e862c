"""COCO-Stuff (the 164k images of COCO 2017 with thing and stuff labels, nightrome/cocostuff).

    train2017/000000000009.jpg, val2017/000000000139.jpg       COCO photos
    stuffthingmaps_trainval2017/train2017/000000000009.png     labels, one channel
    stuffthingmaps_trainval2017/val2017/000000000139.png

Label values 0..181 are the 182 ids of COCO-Stuff's labels.txt less one (value 0 is
labels.txt's 1, person): 0..90 things, 91..181 stuff; 255 is unlabeled. Eleven of the 91
thing ids were dropped from COCO and occur in no map (street sign, hat, shoe, eye glasses,
plate, mirror, window, desk, door, blender, hair brush): they are void here, with
unlabeled, so the schema has 171 classes and void (172 label channels). SPADE
(NVlabs/SPADE data/coco_dataset.py) reads the same stuffthingmaps with 182 label channels
plus "don't care", keeping the eleven empty channels; we drop them. Photos are JPEG of
every size and aspect, so the format centre-crops each to the store's 1:2 and enlarges
small ones (docs/data-formats.md#sizes-and-aspects). Splits: `train` is train2017, `val`
is val2017. Sample id: the file name less its extension.
"""
from __future__ import annotations

from pipeline.data.formats import Format, register_format
from pipeline.data.sources import Scanner

SPLIT_FOLDERS = {"train": "train2017", "val": "val2017"}
LABEL_ROOT = "stuffthingmaps_trainval2017"

# labels.txt of nightrome/cocostuff, ids 1..182 in order (its 0, unlabeled, is the maps' 255).
NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "street sign", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse",
    "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "hat", "backpack", "umbrella", "shoe",
    "eye glasses", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "plate",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "mirror",
    "dining table", "window", "desk", "toilet", "door", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "blender", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush", "hair brush", "banner", "blanket", "branch", "bridge",
    "building-other", "bush", "cabinet", "cage", "cardboard", "carpet", "ceiling-other", "ceiling-tile",
    "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence",
    "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other",
    "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves", "light", "mat",
    "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper", "pavement", "pillow",
    "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river", "road", "rock",
    "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs",
    "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable",
    "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood",
    "water-other", "waterdrops", "window-blind", "window-other", "wood",
)
# labels.txt ids whose class COCO dropped ("Removed from COCO." in cocostuff's labels.md).
UNUSED = frozenset({12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91})
UNLABELED = 255  # the maps' value for labels.txt's 0


# Colours: no colour-coded COCO-Stuff maps are published, so the palette is the VOC colour
# map at the labels.txt id (map value + 1): unlabeled is black, person (128, 0, 0).
def voc_color(index: int) -> tuple[int, int, int]:
    """The PASCAL VOC colour map (the VOC devkit's bit-interleaving, also SPADE's
    util.labelcolormap): distinct colours for 0..255, black for 0."""
    r = g = b = 0
    for shift in range(7, -1, -1):
        r |= (index & 1) << shift
        g |= ((index >> 1) & 1) << shift
        b |= ((index >> 2) & 1) << shift
        index >>= 3
    return r, g, b


def scan_split(scanner: Scanner, split: str, label_type: str) -> None:
    folder = SPLIT_FOLDERS.get(split, split)
    photo_dir = scanner.path(folder)
    label_dir = scanner.path(LABEL_ROOT, folder)
    for path in (photo_dir, label_dir):
        scanner.require_dir(path, split)
    scanner.scan_paired_split(split, label_dir, photo_dir, photo_extensions=(".jpg", ".jpeg"))


def build_schema():
    from pipeline.data.schema import LabelClass, LabelSchema

    classes = tuple(LabelClass(name, (number - 1,), (voc_color(number),))
                    for number, name in enumerate(NAMES, start=1) if number not in UNUSED)
    unused = sorted(UNUSED)
    void = LabelClass("void", tuple(n - 1 for n in unused) + (UNLABELED,),
                      tuple(voc_color(n) for n in unused) + (voc_color(0),))
    return LabelSchema("coco-stuff", classes, void)


FORMAT = register_format(Format(
    name="coco-stuff",
    scan_split=scan_split,
    label_type="ids",
    schema="coco-stuff",
    build_schema=build_schema,
    varied_sizes=True,
    summary="COCO-Stuff 164k: {train,val}2017/*.jpg + stuffthingmaps_trainval2017/{train,val}2017/*.png",
))
