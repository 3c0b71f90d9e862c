"""The training job's parts that need no Ray: config, stages, memory options, metrics, pictures.

    .venv/bin/python -m pytest tests/test_train_parts.py -q

References: hand-built expectations (a digest that must not move, masks of which modules
learn), the same computation without the option (activation checkpointing must not change
gradients), and the formula (per-step averages over ranks).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from crn.config import CRNConfig
from crn.labels import one_hot
from crn.losses import LAYER_WEIGHTS, CRNLoss
from crn.model import CRN
from crn.presets import PRESETS, make_config
from crn.resolution import Resolution
from crn.vgg import VGG19Features
from pipeline.data.schema import load_schema
from pipeline.errors import UserError
from pipeline.options import build_parser, from_dict, to_dict
from pipeline.trainer import average_over_ranks, progress_line
from pipeline.training import stages as train_stages
from pipeline.training.config import TrainConfig, resolve
from pipeline.training.config import parse_train_config as config_from_argv
from pipeline.training.loop import prefetched, train_step
from pipeline.training.recipe import layer_weights_choice, recipe_for, recipe_table, stage_chain
from pipeline.visualize import colorize, image_grid, schema_palette

L = 20


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_batch(seed: int, batch: int = 2, size=(32, 64)):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, L, (batch, *size), generator=g)
    photos = torch.rand(batch, 3, *size, generator=g) * 255
    return one_hot(labels, L), photos


# ---------------------------------------------------------------- configuration


def test_resolve_fills_recipe_defaults_and_a_stable_run_name(tmp_path):
    config = resolve(config_from_argv(["--store", str(tmp_path), "--preset", "crn-256p"]), "cityscapes", "caffe")
    assert (str(config.resolution), config.num_outputs, config.epochs) == ("256x512", 9, 200)
    assert config.loss_weights == "cityscapes-256p" and config.lr == 1e-4 and config.batch_size == 1
    config_512 = resolve(config_from_argv(["--store", str(tmp_path), "--preset", "crn-512p"]), "cityscapes", "caffe")
    assert (config_512.num_outputs, config_512.epochs, config_512.loss_weights) == (1, 20, "cityscapes-512p")
    again = resolve(config_from_argv(["--store", str(tmp_path), "--preset", "crn-256p", "--log-every", "7"]),
                    "cityscapes", "caffe")
    assert again.run_name == config.run_name, "operational flags must not change the run (resume key)"
    other = resolve(config_from_argv(["--store", str(tmp_path), "--preset", "crn-256p", "--seed", "1"]),
                    "cityscapes", "caffe")
    assert other.run_name != config.run_name


def test_the_recipe_table_picks_rows_by_preset_and_data_set(tmp_path):
    """docs/recipe.md#the-recipe-table: GTA5 has its own 256p row; 512p and 1024p start from the stage below."""
    argv = ["--store", str(tmp_path), "--preset", "crn-256p"]
    assert resolve(config_from_argv(argv), "gta5", "caffe").loss_weights == "gta5-256p"
    assert resolve(config_from_argv(argv), "cityscapes", "caffe").loss_weights == "cityscapes-256p"
    assert resolve(config_from_argv(argv), "paired", "caffe").loss_weights == "cityscapes-256p"
    named = resolve(config_from_argv(argv + ["--loss-weights", "uncalibrated"]), "gta5", "caffe")
    assert (named.loss_weights, named.recalibrate_after_epoch) == ("uncalibrated", 1)
    row_1024 = recipe_for("crn-1024p", "cityscapes")
    assert (row_1024.epochs, row_1024.loss_weights, row_1024.starts_from) == (5, "cityscapes-512p", "crn-512p")
    assert recipe_for("crn-512p", "gta5").starts_from == "crn-256p"
    assert [row.preset for row in stage_chain("crn-1024p", "cityscapes")] == ["crn-256p", "crn-512p", "crn-1024p"]
    assert [row.preset for row in stage_chain("crn-256p", "gta5")] == ["crn-256p"]
    # The recipe's trained modules belong to its stage: from scratch, everything learns.
    argv_1024 = ["--store", str(tmp_path), "--preset", "crn-1024p"]
    assert resolve(config_from_argv(argv_1024 + ["--from-scratch"]), "*", "caffe").train_modules == "all"
    staged = resolve(config_from_argv(argv_1024 + ["--init-from", "models:/crn-512p@champion"]), "*", "caffe")
    assert staged.train_modules == "512x1024,1024x2048,head"
    table = recipe_table()
    assert {row["preset"] for row in table} == set(PRESETS)
    assert next(r for r in table if r["preset"] == "crn-256p")["widths"] == [1024] * 5 + [512, 512]


def test_default_layer_weights_follow_the_loss_networks_input_convention(tmp_path):
    """docs/recipe.md#layer-weight-rows: the published rows belong to the MatConvNet network ("caffe" input);
    torchvision-layout or random weights start uncalibrated and recalibrate after epoch 1.
    A row the user names is kept; an explicit --recalibrate-after-epoch wins."""
    argv = ["--store", str(tmp_path), "--preset", "crn-256p"]
    for dataset, row in (("gta5", "gta5-256p"), ("cityscapes", "cityscapes-256p")):
        caffe = resolve(config_from_argv(argv), dataset, "caffe")
        assert (caffe.loss_weights, caffe.recalibrate_after_epoch) == (row, 0)
        torchvision = resolve(config_from_argv(argv), dataset, "torchvision")
        assert (torchvision.loss_weights, torchvision.recalibrate_after_epoch) == ("uncalibrated", 1)
        assert torchvision.run_name != caffe.run_name
    named = resolve(config_from_argv(argv + ["--loss-weights", "gta5-256p"]), "cityscapes", "torchvision")
    assert (named.loss_weights, named.recalibrate_after_epoch) == ("gta5-256p", 0)
    later = resolve(config_from_argv(argv + ["--recalibrate-after-epoch", "100"]), "cityscapes", "torchvision")
    assert (later.loss_weights, later.recalibrate_after_epoch) == ("uncalibrated", 100)
    rule = layer_weights_choice(recipe_for("crn-256p", "gta5"), "torchvision").rule
    assert "gta5-256p belongs to the authors' MatConvNet VGG-19" in rule and "epoch 1" in rule


def test_every_option_is_declared_once_and_parsed_at_the_edge(tmp_path):
    """The flag, its help and its check come from the dataclass field; text becomes typed values."""
    parser = build_parser(TrainConfig, "train", "")
    flags = {a.dest for a in parser._actions if a.dest != "help"}
    assert flags == {f.name for f in dataclasses.fields(TrainConfig)}
    assert all(a.help for a in parser._actions)
    config = config_from_argv(["--store", str(tmp_path), "--resolution", "64x128", "--lr", "0.5"])
    assert config.resolution == Resolution(64, 128) and config.lr == 0.5
    assert from_dict(TrainConfig, to_dict(config)) == config, "the config crosses the Ray boundary unchanged"
    with pytest.raises(UserError, match="--resolution: resolution 64x100 is not h x 2h"):
        config_from_argv(["--store", str(tmp_path), "--resolution", "64x100"])
    with pytest.raises(UserError, match="--lr: must be positive"):
        config_from_argv(["--store", str(tmp_path), "--lr", "0"])


@pytest.mark.parametrize("flag, value", [("--num-workers", "0"), ("--batch-size", "0"), ("--steps", "-1")])
def test_nonsense_flags_are_one_line_errors(tmp_path, flag, value):
    with pytest.raises(UserError, match=flag):
        config_from_argv(["--store", str(tmp_path), flag, value])


# ---------------------------------------------------------------- progressive stages


def test_train_modules_are_checked_and_freeze_the_rest():
    config = make_config("crn-tiny", num_classes=L)
    assert train_stages.parse_train_modules("all", config) == ["4x8", "8x16", "16x32", "32x64", "head"]
    assert train_stages.parse_train_modules("head,32x64", config) == ["32x64", "head"]
    with pytest.raises(UserError, match="64x128"):
        train_stages.parse_train_modules("64x128,head", config)
    model = CRN(config)
    train_stages.freeze_all_but(model, ["32x64", "head"])
    learning = {name for name, p in model.named_parameters() if p.requires_grad}
    assert learning == {n for n, _ in model.named_parameters() if n.startswith(("modules_by_res.32x64.", "head."))}
    assert len(train_stages.trainable_parameters(model)) == len(learning)


def test_earlier_stage_gives_shared_modules_but_never_the_head():
    earlier = CRN(CRNConfig(num_classes=L, widths=(64, 64, 64), num_outputs=2))  # top 16x32
    later_config = make_config("crn-tiny", num_classes=L, num_outputs=2)  # top 32x64
    carried = train_stages.earlier_stage_weights(earlier.state_dict(), later_config, "earlier.pt")
    assert {k.split(".")[1] for k in carried} == {"4x8", "8x16", "16x32"}
    later = CRN(later_config)
    train_stages.load_earlier_stage(later, carried)
    for key, value in earlier.state_dict().items():
        if key.startswith("modules_by_res."):
            assert torch.equal(later.state_dict()[key], value)
    assert not any(key.startswith("head.") for key in carried)


def test_the_papers_stages_by_parameter_count_and_shape():
    """docs/recipe.md#progressive-stages on the full presets, on the meta device (never trained here): 512p takes
    over all seven 256p modules but not the head; 1024p from 512p trains only M_7, M_8 and
    the head: 760,832 + 51,968 + 99 = 812,899 of its 98,674,531 parameters."""
    with torch.device("meta"):
        model_256 = CRN(make_config("crn-256p", L))
        model_512 = CRN(make_config("crn-512p", L))
        model_1024 = CRN(make_config("crn-1024p", L))
    carried = train_stages.earlier_stage_weights(model_256.state_dict(), model_512.config, "256p")
    train_stages.check_lower_stage(carried, model_512.config, "crn-256p", "256p")
    assert {k.split(".")[1] for k in carried} == {str(r) for r in model_256.config.resolutions}
    head_256 = sum(p.numel() for p in model_256.head.parameters())
    assert sum(v.numel() for v in carried.values()) == 97_875_483 - head_256
    assert model_256.head.weight.shape == (27, 512, 1, 1) and model_512.head.weight.shape == (3, 128, 1, 1)

    carried = train_stages.earlier_stage_weights(model_512.state_dict(), model_1024.config, "512p")
    train_stages.check_lower_stage(carried, model_1024.config, "crn-512p", "512p")
    with pytest.raises(UserError, match="this stage starts from a crn-512p model"):
        train_stages.check_lower_stage(train_stages.earlier_stage_weights(model_256.state_dict(), model_1024.config,
                                                                          "256p"), model_1024.config, "crn-512p", "256p")
    trained = train_stages.parse_train_modules(recipe_for("crn-1024p", "cityscapes").train_modules, model_1024.config)
    train_stages.freeze_all_but(model_1024, trained)
    learning = {name.split(".")[0] if name.startswith("head") else name.split(".")[1]
                for name, p in model_1024.named_parameters() if p.requires_grad}
    assert learning == {"512x1024", "1024x2048", "head"}
    assert sum(p.numel() for p in train_stages.trainable_parameters(model_1024)) == 812_899
    assert sum(p.numel() for p in model_1024.parameters()) == 98_674_531


def test_earlier_stage_with_other_classes_or_widths_is_refused():
    earlier = CRN(CRNConfig(num_classes=L + 1, widths=(64, 64, 64), num_outputs=2))
    with pytest.raises(UserError, match="modules_by_res.4x8.conv1.weight has shape"):
        train_stages.earlier_stage_weights(earlier.state_dict(), make_config("crn-tiny", L), "other.pt")


# ---------------------------------------------------------------- memory options


def test_activation_checkpointing_leaves_loss_and_gradients_unchanged():
    onehot, photos = tiny_batch(seed=1)
    loss_fn = CRNLoss(VGG19Features("random"), LAYER_WEIGHTS["uncalibrated"])
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = CRN(make_config("crn-tiny", L, num_outputs=2))
        if checkpointing:
            train_stages.enable_activation_checkpointing(model)
        loss, _ = loss_fn(model(onehot), photos, onehot)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()], set(model.state_dict())))
    (loss_a, grads_a, keys_a), (loss_b, grads_b, keys_b) = results
    assert keys_a == keys_b, "checkpointing must not rename parameters (checkpoints stay loadable)"
    torch.testing.assert_close(loss_b, loss_a)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(b, a)


def test_bf16_step_is_close_to_fp32_and_updates_the_model():
    # bfloat16 convolutions are slow on CPUs: a 16x32 model keeps this test short.
    onehot, photos = tiny_batch(seed=2, batch=1, size=(16, 32))
    loss_fn = CRNLoss(VGG19Features("random"), LAYER_WEIGHTS["uncalibrated"])
    losses = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = CRN(CRNConfig(num_classes=L, widths=(16, 16, 16), num_outputs=2))
        before = model.head.weight.detach().clone()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        losses[precision], terms, fake = train_step(model, loss_fn, optimizer, onehot, photos, precision)
        assert fake.shape == (1, 2, 3, 16, 32) and set(terms) == {"image", "relu1_2", "relu2_2", "relu3_2", "relu4_2", "relu5_2"}
        assert not torch.equal(model.head.weight, before)
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.05)


# ---------------------------------------------------------------- data order and metrics


def test_prefetching_reads_each_batch_once_in_order():
    reads = []

    def read(rows):
        reads.append(list(rows))
        return {"rows": list(rows)}

    batches = [[3, 1], [0, 2], [5, 4]]
    assert [b["rows"] for b in prefetched(read, batches)] == batches
    assert reads == batches
    reads.clear()
    for batch in prefetched(read, batches):  # stopping early reads at most one batch ahead
        break
    assert reads in ([[3, 1]], [[3, 1], [0, 2]])
    assert list(prefetched(read, [])) == []


def test_per_step_metrics_are_averaged_over_ranks():
    rank0 = {"history": [{"step": 1, "loss": 2.0, "relu1_2": 1.0}, {"step": 2, "loss": 4.0, "relu1_2": 3.0}]}
    rank1 = {"history": [{"step": 1, "loss": 4.0, "relu1_2": 2.0}, {"step": 2, "loss": 8.0, "relu1_2": 5.0}]}
    assert average_over_ranks([rank0, rank1]) == {1: {"loss": 3.0, "relu1_2": 1.5}, 2: {"loss": 6.0, "relu1_2": 4.0}}


# ---------------------------------------------------------------- pictures


def test_colorize_uses_the_schema_colours():
    schema = load_schema("cityscapes")
    palette = schema_palette(schema)
    assert palette.shape == (L, 3)
    label = np.array([[0, 13], [19, 10]], dtype=np.uint8)  # road, car, void, sky
    expected = [[schema.classes[0].colors[0], schema.classes[13].colors[0]],
                [schema.void.colors[0], schema.classes[10].colors[0]]]
    np.testing.assert_array_equal(colorize(label, palette), np.array(expected, dtype=np.uint8))
    with pytest.raises(ValueError, match="class 20"):
        colorize(np.array([[20]], dtype=np.uint8), palette)


def test_image_grid_places_label_outputs_and_photo():
    palette = schema_palette(load_schema("cityscapes"))
    labels = np.zeros((2, 4, 8), dtype=np.uint8)
    outputs = np.stack([np.full((3, 4, 8, 3), 10 * (k + 1), np.uint8) for k in range(2)])  # [B=2, K=3, ...]
    photos = np.full((2, 4, 8, 3), 200, np.uint8)
    grid = image_grid(labels, outputs, photos, palette)
    gap = 2
    assert grid.shape == (2 * 4 + gap, 5 * 8 + 4 * gap, 3)
    np.testing.assert_array_equal(grid[0, 0], palette[0])
    np.testing.assert_array_equal(grid[0, 8 + gap], [10, 10, 10])
    np.testing.assert_array_equal(grid[4 + gap, 8 + gap], [20, 20, 20])
    np.testing.assert_array_equal(grid[0, 4 * (8 + gap)], [200, 200, 200])


def test_ray_train_report_log_is_quieted():
    # Ray Train logs each report's whole metrics dict (a window's per-step history) at INFO,
    # from a logger named by its file's path. The file must still be where we look for it,
    # else quiet_report_log() silently stops working after a Ray upgrade.
    import logging

    import ray.train

    from pipeline.trainer import quiet_report_log

    path = Path(ray.train.__file__).parent / "v2" / "_internal" / "execution" / "context.py"
    assert path.exists()
    assert "Reporting training result" in path.read_text()
    logger = logging.getLogger(str(path))
    logger.setLevel(logging.INFO)  # as on a Ray worker, whose logging is set up at INFO
    quiet_report_log()
    assert not logger.isEnabledFor(logging.INFO) and logger.isEnabledFor(logging.WARNING)


def test_the_progress_line_says_step_loss_pace_and_time_left():
    assert progress_line(40, 300, 2, 182.64, 0.85) == "step 40/300 (epoch 2) loss 182.6, 0.85 steps/s, 5 min 6 s left"
    assert progress_line(10, 100000, 0, 1.0, 2.0) == "step 10/100000 (epoch 0) loss 1, 2.00 steps/s, 13 h 53 min left"
    assert progress_line(300, 300, 5, 0.5, 1.0).endswith("0 s left")
    assert progress_line(1, 10, 0, 3.0, None) == "step 1/10 (epoch 0) loss 3"
