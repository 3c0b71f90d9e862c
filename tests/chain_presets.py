"""The paper's three progressive stages scaled down for the tests: presets and recipe rows.

crn-chain-16p (top 16x32, K=4), then crn-chain-32p (32x64, K=1) from it, then crn-chain-64p
(64x128, K=1) from that, each new top module 4x narrower than the one below (as 512 -> 128
-> 32 in the paper), and the last stage training only its top two modules and the head (as
crn-1024p does). They run the stage chain (`--init-from`, `--progressive`) on the toy store
in seconds. conftest.py adds them to the production tables before any test runs.
"""
from __future__ import annotations

from crn.presets import CPU_NUM_OUTPUTS, PRESETS, preset
from pipeline.training.recipe import ALL_MODULES, ANY_DATASET, RECIPES, Recipe

CHAIN_PRESETS = {
    "crn-chain-16p": preset(3, 1, CPU_NUM_OUTPUTS, widths=(64, 64, 64)),
    "crn-chain-32p": preset(4, 1, 1, widths=(64, 64, 64, 16)),
    "crn-chain-64p": preset(5, 1, 1, widths=(64, 64, 64, 16, 4)),
}
CHAIN_RECIPES = [
    Recipe("crn-chain-16p", ANY_DATASET, 200, "cityscapes-256p", "", ALL_MODULES),
    Recipe("crn-chain-32p", ANY_DATASET, 20, "cityscapes-512p", "crn-chain-16p", ALL_MODULES),
    Recipe("crn-chain-64p", ANY_DATASET, 5, "cityscapes-512p", "crn-chain-32p", "32x64,64x128,head"),
]


def add_chain_presets() -> None:
    PRESETS.update(CHAIN_PRESETS)
    RECIPES.extend(row for row in CHAIN_RECIPES if row not in RECIPES)
