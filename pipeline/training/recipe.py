"""The training recipe: one table, preset x data set -> what a run does by default.

The published recipe (docs/recipe.md) in one place. A model preset fixes the
architecture (widths and K, crn.presets); the recipe adds what the authors trained it with:

| preset | data set | epochs | layer weights | starts from | modules that learn |
|---|---|---|---|---|---|
| crn-256p | cityscapes | 200 | cityscapes-256p | (scratch) | all |
| crn-256p | gta5 | 200 | gta5-256p | (scratch) | all |
| crn-256p | ade20k, coco-stuff | 200 | uncalibrated (recalibrated after epoch 1) | (scratch) | all |
| crn-512p | any | 20 | cityscapes-512p | crn-256p | all |
| crn-1024p | any | 5 | cityscapes-512p | crn-512p | 512x1024,1024x2048,head |
| crn-tiny, crn-small, crn-mid | any | 200 | cityscapes-256p | (scratch) | all |

`recipe_for(preset, dataset)` picks the row; the data set is the store's source format
(cityscapes, gta5, paired, ...), and a row for "*" serves any data set without its own.
`--dry-run` prints the whole table and the row in use; the run logs the row. Tests add
rows of their own (the paper's three stages scaled down for CPUs) to `RECIPES`.

Layer weights (docs/recipe.md#layer-weight-rows). A row's layer weights are the published ones, which
the authors measured on their MatConvNet VGG-19: they are the default only for that network
(input convention "caffe", crn.vgg). With torchvision-layout or random VGG weights the
features have other scales, so a run starts from the uncalibrated row (1, 1, 1, 1, 1, 10)
and recalibrates after RECALIBRATION_EPOCH = 1: each VGG layer's weight is divided by the
mean of its term over all of the first epoch's steps (every sample once, every rank). The
first epoch rather than the paper's 100: the weights then hold for almost all of the run
(1/200 of a 256p run goes by uncalibrated; a CPU run of a few dozen steps recalibrates
too), at the price of measuring on a young generator, whose errors are larger and spread
differently over the layers than after 100 epochs; `--recalibrate-after-epoch 100`
measures where the paper did. `layer_weights_choice` is that rule; `--dry-run` prints it
and the run logs it (param `loss.layer_weights_rule`) with the measured means (metrics
`recalibration.<layer>`, tag `crn.recalibration_means`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from crn.losses import LAYER_WEIGHTS
from crn.presets import PRESETS, make_config
from crn.vgg import CAFFE

ANY_DATASET = "*"
ALL_MODULES = "all"
UNCALIBRATED = "uncalibrated"
RECALIBRATION_EPOCH = 1  # an uncalibrated start is recalibrated from the first epoch's terms


@dataclass(frozen=True)
class Recipe:
    preset: str  # crn.presets name: widths, top resolution and K
    dataset: str  # the store's source format, or "*" for any
    epochs: int  # passes over the training split
    loss_weights: str  # the published crn.losses.LAYER_WEIGHTS row (docs/model.md#layer-weights), MatConvNet VGG
    starts_from: str  # the lower stage's preset whose modules it takes over; "" = from scratch
    train_modules: str  # modules that learn when starting from the lower stage ("all" or a comma list)

    def describe(self) -> dict:
        """The row with the architecture it implies, as --dry-run prints it and the run logs it."""
        model = make_config(self.preset, num_classes=1)
        return {**asdict(self), "widths": list(model.widths), "num_outputs": model.num_outputs,
                "top_resolution": str(model.top_resolution)}


RECIPES: list[Recipe] = [
    Recipe("crn-256p", "cityscapes", 200, "cityscapes-256p", "", ALL_MODULES),
    Recipe("crn-256p", "gta5", 200, "gta5-256p", "", ALL_MODULES),
    # No published CRN layer weights exist for ADE20K or COCO-Stuff (the authors trained on
    # Cityscapes, GTA5 and NYU; SPADE's CRN baselines on these two published none): start
    # uncalibrated and recalibrate after epoch 1 whatever the VGG, rather than borrow the
    # Cityscapes row, measured on other scenes. Epochs: the 256p schedule above, not tuned.
    Recipe("crn-256p", "ade20k", 200, UNCALIBRATED, "", ALL_MODULES),
    Recipe("crn-256p", "coco-stuff", 200, UNCALIBRATED, "", ALL_MODULES),
    # Any other data set at 256p: the Cityscapes row as the starting point (recalibrate: docs/recipe.md#recalibration).
    Recipe("crn-256p", ANY_DATASET, 200, "cityscapes-256p", "", ALL_MODULES),
    Recipe("crn-512p", ANY_DATASET, 20, "cityscapes-512p", "crn-256p", ALL_MODULES),
    # The authors' 12 GB GPU held only the top two modules' gradients at 1024p.
    Recipe("crn-1024p", ANY_DATASET, 5, "cityscapes-512p", "crn-512p", "512x1024,1024x2048,head"),
    # The CPU presets (tests, the demo, benchmarks) follow the 256p schedule.
    Recipe("crn-tiny", ANY_DATASET, 200, "cityscapes-256p", "", ALL_MODULES),
    Recipe("crn-small", ANY_DATASET, 200, "cityscapes-256p", "", ALL_MODULES),
    Recipe("crn-mid", ANY_DATASET, 200, "cityscapes-256p", "", ALL_MODULES),
]


@dataclass(frozen=True)
class LayerWeightsChoice:
    start: str  # the LAYER_WEIGHTS row the run starts with
    recalibrate_after_epoch: int  # 0 = never
    rule: str  # why, in one line (--dry-run, MLflow)


def layer_weights_choice(recipe: Recipe, vgg_convention: str, start: str | None = None) -> LayerWeightsChoice:
    """The default layer weights for the loss network in use (module docstring).

    `vgg_convention` is the VGG module's input convention: "caffe" for the authors'
    MatConvNet weights keeps the recipe's published row; anything else (torchvision-layout
    or random weights) starts uncalibrated and recalibrates. `start` is a row the user
    named instead (None = auto); an uncalibrated start is recalibrated either way.
    """
    if start is None:
        start = recipe.loss_weights if vgg_convention == CAFFE else UNCALIBRATED
    if start == UNCALIBRATED:
        why = (f"the published row {recipe.loss_weights} belongs to the authors' MatConvNet VGG-19, not these "
               f"{vgg_convention} weights" if vgg_convention != CAFFE else "uncalibrated start")
        return LayerWeightsChoice(UNCALIBRATED, RECALIBRATION_EPOCH,
                                  f"{why}: start from {UNCALIBRATED} {list(LAYER_WEIGHTS[UNCALIBRATED])} and divide "
                                  f"each VGG layer weight by its mean term over epoch {RECALIBRATION_EPOCH} "
                                  f"(docs/recipe.md#recalibration)")
    kind = "the published row, measured on this network" if vgg_convention == CAFFE else "as named"
    return LayerWeightsChoice(start, 0, f"{vgg_convention} VGG input: {start} {list(LAYER_WEIGHTS[start])}, {kind}; "
                                        f"no recalibration")


def stage_chain(preset: str, dataset: str) -> list[Recipe]:
    """The recipe rows from the first stage (from scratch) up to `preset`, lowest first."""
    chain = [recipe_for(preset, dataset)]
    while chain[0].starts_from:
        chain.insert(0, recipe_for(chain[0].starts_from, dataset))
    return chain


def recipe_for(preset: str, dataset: str) -> Recipe:
    """The row for this preset and data set: its own, else the preset's "*" row."""
    rows = {(r.preset, r.dataset): r for r in RECIPES}
    row = rows.get((preset, dataset)) or rows.get((preset, ANY_DATASET))
    if row is None:
        raise KeyError(f"no recipe for preset {preset!r}")
    return row


def recipe_table() -> list[dict]:
    """Every row, for --dry-run."""
    return [row.describe() for row in RECIPES]


# Every preset has a row, and every row a known preset and layer-weight row.
assert {r.preset for r in RECIPES} == set(PRESETS), "crn.presets and RECIPES disagree"
assert all(r.loss_weights in LAYER_WEIGHTS for r in RECIPES)
