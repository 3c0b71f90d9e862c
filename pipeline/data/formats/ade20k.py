"""ADE20K, as the MIT Scene Parsing challenge publishes it (ADEChallengeData2016).

    ADEChallengeData2016/images/training/ADE_train_00000001.jpg
    ADEChallengeData2016/annotations/training/ADE_train_00000001.png
    ... and images/validation/ADE_val_*.jpg with annotations/validation/ADE_val_*.png

Annotations are one-channel PNGs: 0 is "other" (no class of the 150: void here), 1..150
the classes, in the order below. Photos are JPEG of every size and aspect (mostly 4:3 and
3:4, a few hundred pixels a side), so the format centre-crops each to the store's 1:2 and
enlarges small ones (docs/data-formats.md#sizes-and-aspects). Splits: the store's `train` is
the folder `training`, `val` is `validation` (--splits train,val; the challenge's test
images have no annotations). Sample id: the file name less its extension.
"""
from __future__ import annotations

from pipeline.data.formats import Format, register_format
from pipeline.data.sources import Scanner

SPLIT_FOLDERS = {"train": "training", "val": "validation"}

# (annotation id, short name, colour). Ids and order: the challenge's objectInfo150
# (CSAILVision/sceneparsing); short names as mmsegmentation's ADE20KDataset lists them (the
# first of each line's synonyms, but "television receiver" for line 90);
# colours: the palette published with the challenge (color150) and copied into
# ADE20KDataset.PALETTE. That palette gives skyscraper (49) the colour of road (7),
# (140, 140, 140); a colour map cannot tell them apart, so the colour means road and
# skyscraper has none (its id labels, the data set's own, are unambiguous).
CLASSES: tuple[tuple[int, str, tuple[int, int, int]], ...] = (
    (1, "wall", (120, 120, 120)),
    (2, "building", (180, 120, 120)),
    (3, "sky", (6, 230, 230)),
    (4, "floor", (80, 50, 50)),
    (5, "tree", (4, 200, 3)),
    (6, "ceiling", (120, 120, 80)),
    (7, "road", (140, 140, 140)),
    (8, "bed", (204, 5, 255)),
    (9, "windowpane", (230, 230, 230)),
    (10, "grass", (4, 250, 7)),
    (11, "cabinet", (224, 5, 255)),
    (12, "sidewalk", (235, 255, 7)),
    (13, "person", (150, 5, 61)),
    (14, "earth", (120, 120, 70)),
    (15, "door", (8, 255, 51)),
    (16, "table", (255, 6, 82)),
    (17, "mountain", (143, 255, 140)),
    (18, "plant", (204, 255, 4)),
    (19, "curtain", (255, 51, 7)),
    (20, "chair", (204, 70, 3)),
    (21, "car", (0, 102, 200)),
    (22, "water", (61, 230, 250)),
    (23, "painting", (255, 6, 51)),
    (24, "sofa", (11, 102, 255)),
    (25, "shelf", (255, 7, 71)),
    (26, "house", (255, 9, 224)),
    (27, "sea", (9, 7, 230)),
    (28, "mirror", (220, 220, 220)),
    (29, "rug", (255, 9, 92)),
    (30, "field", (112, 9, 255)),
    (31, "armchair", (8, 255, 214)),
    (32, "seat", (7, 255, 224)),
    (33, "fence", (255, 184, 6)),
    (34, "desk", (10, 255, 71)),
    (35, "rock", (255, 41, 10)),
    (36, "wardrobe", (7, 255, 255)),
    (37, "lamp", (224, 255, 8)),
    (38, "bathtub", (102, 8, 255)),
    (39, "railing", (255, 61, 6)),
    (40, "cushion", (255, 194, 7)),
    (41, "base", (255, 122, 8)),
    (42, "box", (0, 255, 20)),
    (43, "column", (255, 8, 41)),
    (44, "signboard", (255, 5, 153)),
    (45, "chest of drawers", (6, 51, 255)),
    (46, "counter", (235, 12, 255)),
    (47, "sand", (160, 150, 20)),
    (48, "sink", (0, 163, 255)),
    (49, "skyscraper", (140, 140, 140)),
    (50, "fireplace", (250, 10, 15)),
    (51, "refrigerator", (20, 255, 0)),
    (52, "grandstand", (31, 255, 0)),
    (53, "path", (255, 31, 0)),
    (54, "stairs", (255, 224, 0)),
    (55, "runway", (153, 255, 0)),
    (56, "case", (0, 0, 255)),
    (57, "pool table", (255, 71, 0)),
    (58, "pillow", (0, 235, 255)),
    (59, "screen door", (0, 173, 255)),
    (60, "stairway", (31, 0, 255)),
    (61, "river", (11, 200, 200)),
    (62, "bridge", (255, 82, 0)),
    (63, "bookcase", (0, 255, 245)),
    (64, "blind", (0, 61, 255)),
    (65, "coffee table", (0, 255, 112)),
    (66, "toilet", (0, 255, 133)),
    (67, "flower", (255, 0, 0)),
    (68, "book", (255, 163, 0)),
    (69, "hill", (255, 102, 0)),
    (70, "bench", (194, 255, 0)),
    (71, "countertop", (0, 143, 255)),
    (72, "stove", (51, 255, 0)),
    (73, "palm", (0, 82, 255)),
    (74, "kitchen island", (0, 255, 41)),
    (75, "computer", (0, 255, 173)),
    (76, "swivel chair", (10, 0, 255)),
    (77, "boat", (173, 255, 0)),
    (78, "bar", (0, 255, 153)),
    (79, "arcade machine", (255, 92, 0)),
    (80, "hovel", (255, 0, 255)),
    (81, "bus", (255, 0, 245)),
    (82, "towel", (255, 0, 102)),
    (83, "light", (255, 173, 0)),
    (84, "truck", (255, 0, 20)),
    (85, "tower", (255, 184, 184)),
    (86, "chandelier", (0, 31, 255)),
    (87, "awning", (0, 255, 61)),
    (88, "streetlight", (0, 71, 255)),
    (89, "booth", (255, 0, 204)),
    (90, "television receiver", (0, 255, 194)),
    (91, "airplane", (0, 255, 82)),
    (92, "dirt track", (0, 10, 255)),
    (93, "apparel", (0, 112, 255)),
    (94, "pole", (51, 0, 255)),
    (95, "land", (0, 194, 255)),
    (96, "bannister", (0, 122, 255)),
    (97, "escalator", (0, 255, 163)),
    (98, "ottoman", (255, 153, 0)),
    (99, "bottle", (0, 255, 10)),
    (100, "buffet", (255, 112, 0)),
    (101, "poster", (143, 255, 0)),
    (102, "stage", (82, 0, 255)),
    (103, "van", (163, 255, 0)),
    (104, "ship", (255, 235, 0)),
    (105, "fountain", (8, 184, 170)),
    (106, "conveyer belt", (133, 0, 255)),
    (107, "canopy", (0, 255, 92)),
    (108, "washer", (184, 0, 255)),
    (109, "plaything", (255, 0, 31)),
    (110, "swimming pool", (0, 184, 255)),
    (111, "stool", (0, 214, 255)),
    (112, "barrel", (255, 0, 112)),
    (113, "basket", (92, 255, 0)),
    (114, "waterfall", (0, 224, 255)),
    (115, "tent", (112, 224, 255)),
    (116, "bag", (70, 184, 160)),
    (117, "minibike", (163, 0, 255)),
    (118, "cradle", (153, 0, 255)),
    (119, "oven", (71, 255, 0)),
    (120, "ball", (255, 0, 163)),
    (121, "food", (255, 204, 0)),
    (122, "step", (255, 0, 143)),
    (123, "tank", (0, 255, 235)),
    (124, "trade name", (133, 255, 0)),
    (125, "microwave", (255, 0, 235)),
    (126, "pot", (245, 0, 255)),
    (127, "animal", (255, 0, 122)),
    (128, "bicycle", (255, 245, 0)),
    (129, "lake", (10, 190, 212)),
    (130, "dishwasher", (214, 255, 0)),
    (131, "screen", (0, 204, 255)),
    (132, "blanket", (20, 0, 255)),
    (133, "sculpture", (255, 255, 0)),
    (134, "hood", (0, 153, 255)),
    (135, "sconce", (0, 41, 255)),
    (136, "vase", (0, 255, 204)),
    (137, "traffic light", (41, 0, 255)),
    (138, "tray", (41, 255, 0)),
    (139, "ashcan", (173, 0, 255)),
    (140, "fan", (0, 245, 255)),
    (141, "pier", (71, 0, 255)),
    (142, "crt screen", (122, 0, 255)),
    (143, "plate", (0, 255, 184)),
    (144, "monitor", (0, 92, 255)),
    (145, "bulletin board", (184, 255, 0)),
    (146, "shower", (0, 133, 255)),
    (147, "radiator", (255, 214, 0)),
    (148, "glass", (25, 194, 194)),
    (149, "clock", (102, 255, 0)),
    (150, "flag", (92, 0, 255)),
)
SHARED_COLOR_LOSERS = {"skyscraper"}
VOID_ID = 0
VOID_COLOR = (0, 0, 0)


def scan_split(scanner: Scanner, split: str, label_type: str) -> None:
    folder = SPLIT_FOLDERS.get(split, split)
    photo_dir = scanner.path("images", folder)
    label_dir = scanner.path("annotations", folder)
    for path in (photo_dir, label_dir):
        scanner.require_dir(path, split)
    scanner.scan_paired_split(split, label_dir, photo_dir, photo_extensions=(".jpg", ".jpeg"))


def build_schema():
    from pipeline.data.schema import LabelClass, LabelSchema

    classes = tuple(LabelClass(name, (index,), () if name in SHARED_COLOR_LOSERS else (color,))
                    for index, name, color in CLASSES)
    return LabelSchema("ade20k", classes, LabelClass("void", (VOID_ID,), (VOID_COLOR,)))


FORMAT = register_format(Format(
    name="ade20k",
    scan_split=scan_split,
    label_type="ids",
    schema="ade20k",
    build_schema=build_schema,
    varied_sizes=True,
    summary="ADEChallengeData2016: images/{training,validation}/*.jpg + annotations/{training,validation}/*.png",
))
