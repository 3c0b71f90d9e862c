"""The training recipe: one table, preset x data set -> what a run does by default.

The published recipe (crn-spec.md sections 3.2 and 4) in one place. A model preset fixes the
architecture (widths and K, crn.presets); the recipe adds what the authors trained it with:

| preset | data set | epochs | layer weights | starts from | modules that learn |
|---|---|---|---|---|---|
| crn-256p | cityscapes | 200 | cityscapes-256p | (scratch) | all |
| crn-256p | gta5 | 200 | gta5-256p | (scratch) | all |
| crn-512p | any | 20 | cityscapes-512p | crn-256p | all |
| crn-1024p | any | 5 | cityscapes-512p | crn-512p | 512x1024,1024x2048,head |
| crn-tiny, crn-small, crn-mid | any | 200 | cityscapes-256p | (scratch) | all |

`recipe_for(preset, dataset)` picks the row; the data set is the store's source format
(cityscapes, gta5, paired, ...), and a row for "*" serves any data set without its own.
`--dry-run` prints the whole table and the row in use; the run logs the row.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from crn.losses import LAYER_WEIGHTS
from crn.presets import PRESETS, make_config

ANY_DATASET = "*"
ALL_MODULES = "all"


@dataclass(frozen=True)
class Recipe:
    preset: str  # crn.presets name: widths, top resolution and K
    dataset: str  # the store's source format, or "*" for any
    epochs: int  # passes over the training split
    loss_weights: str  # crn.losses.LAYER_WEIGHTS row (section 3.2)
    starts_from: str  # the lower stage's preset whose modules it takes over; "" = from scratch
    train_modules: str  # modules that learn when starting from the lower stage ("all" or a comma list)

    def describe(self) -> dict:
        """The row with the architecture it implies, as --dry-run prints it and the run logs it."""
        model = make_config(self.preset, num_classes=1)
        return {**asdict(self), "widths": list(model.widths), "num_outputs": model.num_outputs,
                "top_resolution": str(model.top_resolution)}


RECIPES: tuple[Recipe, ...] = (
    Recipe("crn-256p", "cityscapes", 200, "cityscapes-256p", "", ALL_MODULES),
    Recipe("crn-256p", "gta5", 200, "gta5-256p", "", ALL_MODULES),
    # Any other data set at 256p: the Cityscapes row as the starting point (recalibrate, 3.3).
    Recipe("crn-256p", ANY_DATASET, 200, "cityscapes-256p", "", ALL_MODULES),
    Recipe("crn-512p", ANY_DATASET, 20, "cityscapes-512p", "crn-256p", ALL_MODULES),
    # The authors' 12 GB GPU held only the top two modules' gradients at 1024p.
    Recipe("crn-1024p", ANY_DATASET, 5, "cityscapes-512p", "crn-512p", "512x1024,1024x2048,head"),
    # The CPU presets (tests, the demo, benchmarks) follow the 256p schedule.
    Recipe("crn-tiny", ANY_DATASET, 200, "cityscapes-256p", "", ALL_MODULES),
    Recipe("crn-small", ANY_DATASET, 200, "cityscapes-256p", "", ALL_MODULES),
    Recipe("crn-mid", ANY_DATASET, 200, "cityscapes-256p", "", ALL_MODULES),
)


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
