"""Distributed training end to end: real Ray Train fits on the toy store, real MLflow, real S3.

    .venv/bin/python -m pytest tests/test_train.py -q -x

Every fit is crn-tiny (top 32x64, K=2) or a crn-chain stage with random VGG weights (named,
so nothing is downloaded) on the 8 training samples of the `toy_store` fixture, for a few
steps; about 4-6 minutes on 2 cores (most of each fit is Ray starting workers).
References: the same Adam step computed by hand in this process on the rows the epoch's
permutation gives (DDP), an uninterrupted run (resume), `crn.losses.recalibrate` on the
logged per-layer terms, the earlier stage's weights (progressive stages), and the
checkpoint file itself (registry).
"""
from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pytest
import ray.train
import torch
from faults import dying_once
from mlflow.tracking import MlflowClient
from worker_probes import recording_environment

from crn.checkpoint import load_checkpoint, make_checkpoint, model_from_checkpoint, save_checkpoint
from crn.config import CRNConfig
from crn.labels import one_hot
from crn.losses import LAYER_WEIGHTS, CRNLoss, recalibrate
from crn.model import CRN
from crn.presets import make_config
from crn.vgg import LAYER_NAMES, VGG19Features
from jobs.train import main as train_main
from pipeline.data.schema import load_schema
from pipeline.data.store import decode_labels, decode_photos, label_column, open_store, photo_column
from pipeline.records import git_commit
from pipeline.registry.models import open_model
from pipeline.runtime import CPU_WORKER_MALLOC_ENV, entrypoint
from pipeline.training import job as train
from pipeline.errors import UserError
from pipeline.training.config import learning_rate
from pipeline.training.config import parse_train_config as config_from_argv
from pipeline.training.loop import CHECKPOINT_FILE, train_loop_per_worker
from pipeline.training.order import epoch_permutation
from pipeline.training.plan import make_plan
from pipeline.training.progression import run_progression

EXPERIMENT = "test-train"
NUM_CLASSES, K = 20, 2
SEED = 0


pytestmark = pytest.mark.usefixtures("one_torch_thread", "module_experiment")


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def tiny_argv(store, run_name: str, *extra: str) -> list[str]:
    return ["--store", str(store), "--preset", "crn-tiny", "--num-outputs", str(K), "--vgg-weights", "random",
            "--threads-per-worker", "1", "--run-name", run_name, "--experiment", EXPERIMENT, "--image-every", "0",
            "--seed", str(SEED), *extra]


def fit(argv: list[str], train_loop=train_loop_per_worker) -> train.TrainOutcome:
    return train.run(config_from_argv(argv), train_loop)


def checkpoint_of(outcome: train.TrainOutcome) -> dict:
    with outcome.checkpoint.as_directory() as folder:
        return load_checkpoint(Path(folder) / CHECKPOINT_FILE)


def loss_steps(run_id: str) -> list[int]:
    return sorted(m.step for m in MlflowClient().get_metric_history(run_id, "loss"))


# ---------------------------------------------------------------- bad input: one line, no workers


@pytest.mark.parametrize("extra, message", [
    (["--num-workers", "5"], "5 worker(s) x 1 CPU need 5 CPUs; the Ray cluster has 4"),
    (["--use-gpu"], "--use-gpu with 1 worker(s) needs 1 GPU(s); the Ray cluster has 0"),
    (["--resolution", "64x128"], "--resolution 64x128: preset crn-tiny makes 32x64 images"),
    (["--batch-size", "5", "--num-workers", "2"], "has 8 training samples: too few for 2 worker(s) x batch 5"),
    (["--train-modules", "64x128"], "--train-modules '64x128': unknown module(s) 64x128"),
    (["--num-workers", "2", "--placement-strategy", "STRICT_SPREAD"],
     "STRICT_SPREAD puts each of 2 worker(s) on a node of its own, with 1 CPU; the Ray cluster has 1 such node(s)"),
])
def test_bad_input_is_one_line_before_any_worker(toy_store, ray_session, capsys, extra, message):
    code = entrypoint(train_main)(tiny_argv(toy_store, unique("bad"), *extra))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_missing_store_and_uncached_imagenet_weights_are_one_line_errors(tmp_path, toy_store, capsys, monkeypatch):
    code = entrypoint(train_main)(tiny_argv(tmp_path / "nowhere", unique("bad")))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "manifest.json is missing" in err[0]
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))  # no cached ImageNet weights here
    argv = tiny_argv(toy_store, unique("bad"))
    argv[argv.index("random")] = "imagenet"
    code = entrypoint(train_main)(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "VGG-19 ImageNet weights not found" in err[0]


def test_earlier_stage_with_another_schema_is_refused(tmp_path, toy_store, capsys):
    schema = load_schema("cityscapes").to_dict()
    schema["name"], schema["classes"] = "three-classes", schema["classes"][:2]
    earlier = CRN(CRNConfig(num_classes=3, widths=(64, 64, 64), num_outputs=K))
    path = tmp_path / "other-schema.pt"
    save_checkpoint(path, make_checkpoint(earlier, optimizer=None, step=0, epoch=0, loss_weights=[1.0] * 6,
                                          label_schema=schema))
    code = entrypoint(train_main)(tiny_argv(toy_store, unique("bad"), "--init-from", str(path)))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "label schema mismatch" in err[0], err


# ---------------------------------------------------------------- DDP


def test_two_workers_make_the_update_of_one_step_on_the_combined_batch(toy_store, ray_session, tmp_path):
    """2 ranks x batch 2: the first step's global batch is the first 4 rows of epoch 0's
    permutation of the 8 training rows; the reference takes one Adam step on those 4 (random
    VGG weights: the layer weights start uncalibrated). Both CPU workers start with the
    allocator settings of pipeline.runtime.CPU_WORKER_MALLOC_ENV."""
    outcome = fit(tiny_argv(toy_store, unique("ddp"), "--num-workers", "2", "--batch-size", "2", "--steps", "1"),
                  recording_environment(tmp_path, CPU_WORKER_MALLOC_ENV))
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank-{rank}.json").read_text()) == CPU_WORKER_MALLOC_ENV
    ddp = checkpoint_of(outcome)
    assert ddp["step"] == 1
    # --steps 1 runs one epoch of the recipe's 200, and the run says so.
    assert MlflowClient().get_run(outcome.run_id).data.params["epochs"] == "1"

    rows = epoch_permutation(8, SEED, 0)[:4]
    assert sorted(rows.tolist()) != [0, 1, 2, 3], "seed 0 should not happen to pick the stored order"
    table = open_store(toy_store).read_table("train", "32x64")
    labels = torch.from_numpy(decode_labels(table.column(label_column("32x64")), "32x64")[rows].copy()).long()
    photos = torch.from_numpy(decode_photos(table.column(photo_column("32x64")), "32x64")[rows].copy())
    onehot, real = one_hot(labels, NUM_CLASSES), photos.permute(0, 3, 1, 2).float()
    torch.manual_seed(SEED)
    model = CRN(make_config("crn-tiny", NUM_CLASSES, K))
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(SEED)
    loss_fn = CRNLoss(VGG19Features("random"), LAYER_WEIGHTS["uncalibrated"])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss, _ = loss_fn(model(onehot), real, onehot)
    loss.backward()
    optimizer.step()

    # Adam's first moment after one step is (1 - beta1) * gradient: it shows the averaged
    # gradient itself (the parameter update alone is nearly sign(gradient) and would not).
    reference_moments = [optimizer.state[p]["exp_avg"] for p in model.parameters()]
    ddp_moments = [ddp["optimizer"]["state"][i]["exp_avg"] for i in range(len(reference_moments))]
    for ours, theirs in zip(ddp_moments, reference_moments):
        torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-5 * theirs.abs().max().item())
    for key, value in model.state_dict().items():
        torch.testing.assert_close(ddp["model"][key], value, rtol=0, atol=1e-6)
    assert any(not torch.equal(ddp["model"][k], initial[k]) for k in initial), "the step changed nothing"


# ---------------------------------------------------------------- a lost worker


@pytest.mark.slow
def test_a_killed_worker_is_survived_from_the_last_checkpoint(toy_store, ray_session, s3_endpoint, tmp_path):
    """2 ranks x batch 2: 2 steps per epoch. Rank 1 dies after step 2; the group restarts
    from the step-2 checkpoint (in S3) and finishes the 4 steps."""
    run_name = unique("fault")
    outcome = fit(tiny_argv(toy_store, run_name, "--num-workers", "2", "--batch-size", "2", "--steps", "4",
                            "--checkpoint-every", "2", "--log-every", "1",
                            "--max-failures", "1", "--storage-path", "s3://test-bucket/ray-results"),
                  dying_once(tmp_path / "died", after_step=2, rank=1))
    assert (tmp_path / "died").exists()
    assert outcome.final["step"] == 4 and outcome.final["resumed_from_step"] == 2
    assert checkpoint_of(outcome)["step"] == 4
    assert outcome.checkpoint.path.startswith(f"test-bucket/ray-results/{run_name}/")
    run = MlflowClient().get_run(outcome.run_id)
    assert run.data.tags["crn.worker_failures"] == "1"
    assert loss_steps(outcome.run_id) == [1, 2, 3, 4]


# ---------------------------------------------------------------- progressive stages


def test_a_stage_starts_from_the_earlier_one_and_trains_only_named_modules(tmp_path, toy_store, ray_session):
    """A 3-module stage (top 16x32) grows into crn-tiny (top 32x64); only 32x64 and the head learn."""
    torch.manual_seed(123)
    earlier = CRN(CRNConfig(num_classes=NUM_CLASSES, widths=(64, 64, 64), num_outputs=K))
    path = tmp_path / "stage-16x32.pt"
    save_checkpoint(path, make_checkpoint(earlier, optimizer=None, step=10, epoch=1, loss_weights=[1.0] * 6,
                                          label_schema=load_schema("cityscapes").to_dict()))
    outcome = fit(tiny_argv(toy_store, unique("stage"), "--batch-size", "2", "--steps", "2", "--init-from", str(path),
                            "--train-modules", "32x64,head", "--activation-checkpointing"))
    final = checkpoint_of(outcome)["model"]
    torch.manual_seed(SEED)
    fresh = CRN(make_config("crn-tiny", NUM_CLASSES, K)).state_dict()
    for key, value in earlier.state_dict().items():
        if key.startswith("modules_by_res."):
            assert torch.equal(final[key], value), f"{key}: frozen module moved or was not loaded"
    for key in fresh:
        if key.startswith(("modules_by_res.32x64.", "head.")):
            assert not torch.equal(final[key], fresh[key]), f"{key} did not learn"
            assert final[key].shape == fresh[key].shape


# ---------------------------------------------------------------- a short run: loss, recalibration, resume

# batch 2 on the 8 training samples: 4 steps per epoch, 3 epochs. The VGG layer weights are
# recalibrated after epoch 2 from that epoch's per-layer terms (docs/recipe.md#recalibration).
SHORT_SCHEDULE = ["--batch-size", "2", "--epochs", "3", "--steps", "12", "--lr-schedule", "cosine",
                  "--checkpoint-every", "4", "--log-every", "2", "--recalibrate-after-epoch", "2"]


@pytest.fixture(scope="module")
def short_run(toy_store, ray_session):
    argv = tiny_argv(toy_store, unique("short"), *SHORT_SCHEDULE)
    argv[argv.index("--image-every") + 1] = "4"
    return fit(argv)


def test_the_loss_falls_on_the_toy_data(short_run):
    history = {m.step: m.value for m in MlflowClient().get_metric_history(short_run.run_id, "loss")}
    assert sorted(history) == list(range(1, 13))
    first_epoch = np.mean([history[s] for s in range(1, 5)])
    second_epoch = np.mean([history[s] for s in range(5, 9)])  # the same 8 samples, same loss weights
    assert second_epoch < 0.8 * first_epoch, (first_epoch, second_epoch)


def test_the_learning_rate_decays_on_the_cosine_to_the_last_step(short_run, toy_store):
    config = config_from_argv(tiny_argv(toy_store, "x", *SHORT_SCHEDULE))
    rates = [learning_rate(config, step) for step in range(12)]
    assert rates[0] == config.lr and rates[6] == pytest.approx(config.lr / 2) and 0 < rates[11] < rates[10]
    [group] = checkpoint_of(short_run)["optimizer"]["param_groups"]
    assert group["lr"] == pytest.approx(rates[11], rel=1e-12)  # the rate the last step took
    with pytest.raises(UserError, match="--lr-schedule cosine decays over --steps: give --steps"):
        config_from_argv(["--store", str(toy_store), "--lr-schedule", "cosine"])


def test_layer_weights_are_recalibrated_from_the_measured_terms(short_run):
    """Random VGG weights start from the uncalibrated row; after epoch 2 each VGG layer weight
    is divided by its term's mean over that epoch's 4 steps (each step's term is the plain
    mean L1 of the layer, logged under the layer's name)."""
    client = MlflowClient()
    means = [np.mean([m.value for m in client.get_metric_history(short_run.run_id, name) if 5 <= m.step <= 8])
             for name in LAYER_NAMES]
    expected = recalibrate(LAYER_WEIGHTS["uncalibrated"], means)
    np.testing.assert_allclose(checkpoint_of(short_run)["loss_weights"], expected, rtol=1e-6)
    assert short_run.final["loss_weights"] != list(LAYER_WEIGHTS["uncalibrated"])
    # The run logs the measured means and the new weights at the step that closed epoch 2.
    for name, mean, weight in zip(LAYER_NAMES, means, expected):
        [logged] = client.get_metric_history(short_run.run_id, f"recalibration.{name}")
        assert logged.step == 8 and logged.value == pytest.approx(mean, rel=1e-6)
        [logged] = client.get_metric_history(short_run.run_id, f"layer_weight.{name}")
        assert logged.value == pytest.approx(weight, rel=1e-6)
    tags = client.get_run(short_run.run_id).data.tags
    np.testing.assert_allclose(json.loads(tags["crn.recalibration_means"]), means, rtol=1e-6)
    assert "start from uncalibrated" in tags["crn.layer_weights_rule"]


@pytest.mark.slow
def test_rerun_after_a_stop_resumes_and_matches_an_uninterrupted_run(short_run, toy_store, tmp_path):
    """The short run's schedule, stopped after step 4 (its checkpoint, in the middle of the
    recalibration epoch), then the same command again."""
    stopped = tiny_argv(toy_store, unique("stopped"), *SHORT_SCHEDULE, "--max-failures", "0",
                        "--model-name", "crn-test-resumed")  # leaves the short run's registered model alone
    with pytest.raises(ray.train.TrainingFailedError):
        fit(stopped, dying_once(tmp_path / "died", after_step=4, rank=0))
    resumed = fit(stopped)

    assert resumed.final["resumed_from_step"] == 4 and resumed.final["step"] == 12
    ours, theirs = checkpoint_of(resumed), checkpoint_of(short_run)
    assert ours["step"] == theirs["step"] == 12 and ours["epoch"] == theirs["epoch"] == 3
    np.testing.assert_allclose(ours["loss_weights"], theirs["loss_weights"], rtol=1e-6)
    for key, value in theirs["model"].items():
        torch.testing.assert_close(ours["model"][key], value, rtol=1e-5, atol=1e-6)
    # One MLflow run across both attempts, each step logged once.
    run_name = stopped[stopped.index("--run-name") + 1]
    runs = mlflow.search_runs(experiment_names=[EXPERIMENT], output_format="list",
                              filter_string=f"tags.`crn.ray_run` LIKE '%/{run_name}'")
    assert [r.info.run_id for r in runs] == [resumed.run_id]
    assert loss_steps(resumed.run_id) == list(range(1, 13))


def test_mlflow_holds_config_metrics_images_and_the_registered_candidate(short_run, toy_store):
    client = MlflowClient()
    run = client.get_run(short_run.run_id)
    config = config_from_argv(tiny_argv(toy_store, "x"))
    assert set(vars(config)) <= set(run.data.params), "every config field is a param"
    assert run.data.params["preset"] == "crn-tiny" and run.data.params["vgg_weights"] == "random"
    assert run.data.params["model.widths"] == "[64, 64, 64, 64]"
    assert run.data.tags["crn.vgg_weights"] == "random"
    assert {"loss", *LAYER_NAMES, "steps_per_s", "samples_per_s"} <= set(run.data.metrics)
    assert not {f"layer{i}" for i in range(6)} & set(run.data.metrics), "terms are named by VGG layer"
    assert run.data.tags["crn.vgg_input"] == "torchvision" and run.data.params["loss_weights"] == "uncalibrated"
    # The records a user of MLflow expects: a description, the code's commit, the machine's
    # load, the store as the dataset input (by its fingerprint), and the epochs that ran.
    assert "crn-tiny (32x64, K=2) on " in run.data.tags["mlflow.note.content"]
    assert run.data.tags["crn.git_commit"] == git_commit() != "unknown"
    assert any(name.startswith("system/") for name in run.data.metrics), sorted(run.data.metrics)
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == open_store(toy_store).manifest["key"][:20]
    assert dataset_input.dataset.source_type == "local" and str(toy_store) in dataset_input.dataset.source
    assert run.data.params["epochs"] == "3"
    images = sorted(a.path for a in client.list_artifacts(short_run.run_id, "images"))
    assert images == [f"images/step_{s:08d}.png" for s in (4, 8, 12)]

    name = run.data.params["model_name"]
    dataset = Path(open_store(toy_store).manifest["source"]["uri"]).name  # the toy source's folder
    assert name == f"crn-{dataset}-32x64"
    assert str(client.get_model_version_by_alias(name, "candidate").version) == short_run.model_version
    assert "label maps of 32x64" in client.get_registered_model(name).description
    assert "step 12, epoch 3" in client.get_model_version(name, short_run.model_version).description
    logged = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{short_run.model_version}"))
    requirements = (logged / "requirements.txt").read_text()
    assert all(f"{package}==" in requirements for package in ("torch", "numpy", "mlflow", "cloudpickle"))
    assert (logged / "input_example.json").is_file() or (logged / "serving_input_example.json").is_file()
    registered = open_model(f"models:/{name}@candidate")
    direct = model_from_checkpoint(checkpoint_of(short_run))
    labels = torch.from_numpy(np.random.default_rng(3).integers(0, NUM_CLASSES, (2, 32, 64))).long()
    with torch.no_grad():
        torch.testing.assert_close(registered.build()(one_hot(labels, NUM_CLASSES)), direct(one_hot(labels, NUM_CLASSES)),
                                   rtol=0, atol=0)
    assert registered.description["step"] == 12


def test_a_registered_model_seeds_the_next_stage(short_run, toy_store):
    """A K=1 stage from the registered K=2 model (models:/ URI): its modules, not its head."""
    name = MlflowClient().get_run(short_run.run_id).data.params["model_name"]
    plan = make_plan(config_from_argv(["--store", str(toy_store), "--preset", "crn-tiny", "--num-outputs", "1",
                                             "--vgg-weights", "random", "--init-from", f"models:/{name}@candidate"]))
    registered = open_model(f"models:/{name}@candidate").build().state_dict()
    assert {k.split(".")[1] for k in plan.init_weights} == {"4x8", "8x16", "16x32", "32x64"}
    for key, value in plan.init_weights.items():
        assert torch.equal(value, registered[key])
    assert mlflow.active_run() is None


# ---------------------------------------------------------------- the recipe's stages and data sets


def chain_argv(store, *extra: str) -> list[str]:
    return ["--store", str(store), "--vgg-weights", "random", "--threads-per-worker", "1", "--experiment", EXPERIMENT,
            "--image-every", "0", "--seed", str(SEED), "--batch-size", "2", *extra]


@pytest.mark.parametrize("preset", ["crn-512p", "crn-1024p", "crn-chain-32p"])
def test_a_higher_stage_without_its_lower_stage_is_a_one_line_error(toy_store, capsys, preset):
    code = entrypoint(train_main)(chain_argv(toy_store, "--preset", preset))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--init-from" in err[0] and "--from-scratch" in err[0], err
    assert f"--preset {preset} starts from a " in err[0]


def test_a_lower_stage_of_the_wrong_size_is_refused(tmp_path, toy_store, capsys):
    earlier = CRN(make_config("crn-chain-16p", NUM_CLASSES))  # crn-chain-64p starts from crn-chain-32p
    path = tmp_path / "chain-16p.pt"
    save_checkpoint(path, make_checkpoint(earlier, optimizer=None, step=1, epoch=1, loss_weights=[1.0] * 6,
                                          label_schema=load_schema("cityscapes").to_dict()))
    code = entrypoint(train_main)(chain_argv(toy_store, "--preset", "crn-chain-64p", "--init-from", str(path)))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "has modules 4x8, 8x16, 16x32; this stage starts from a crn-chain-32p model with modules " \
           "4x8, 8x16, 16x32, 32x64" in err[0]
    plan = make_plan(config_from_argv(chain_argv(toy_store, "--preset", "crn-chain-32p", "--init-from", str(path))))
    assert {key.split(".")[1] for key in plan.init_weights} == {"4x8", "8x16", "16x32"}
    assert plan.train_modules == ["4x8", "8x16", "16x32", "32x64", "head"]


@pytest.mark.slow
def test_progressive_runs_every_stage_from_the_one_below_and_resumes(toy_store, ray_session):
    """The scaled-down chain crn-chain-16p -> 32p -> 64p (2 steps each): each stage registered,
    each started from the registered stage below (not its head); the top stage trains only
    its two top modules and the head. Running the 2-stage command first and then the 3-stage
    one shows a re-run picking up after the last finished stage."""
    name = unique("chain")
    first = run_progression(config_from_argv(chain_argv(toy_store, "--preset", "crn-chain-32p", "--progressive",
                                                        "--steps", "2", "--run-name", name, "--model-name", name)))
    assert [(s.preset, s.trained) for s in first] == [("crn-chain-16p", True), ("crn-chain-32p", True)]
    outcomes = run_progression(config_from_argv(chain_argv(toy_store, "--preset", "crn-chain-64p", "--progressive",
                                                           "--steps", "2", "--run-name", name, "--model-name", name)))
    assert [(s.preset, s.trained) for s in outcomes] == [("crn-chain-16p", False), ("crn-chain-32p", False),
                                                          ("crn-chain-64p", True)]
    assert [s.model_uri for s in outcomes[:2]] == [s.model_uri for s in first]
    models = [open_model(s.model_uri) for s in outcomes]
    assert [m.description["step"] for m in models] == [2, 2, 2]
    stage_16, stage_32, stage_64 = (m.build().state_dict() for m in models)
    client = MlflowClient()
    params = client.get_run(outcomes[1].run_id).data.params
    assert params["init_from"] == outcomes[0].model_uri and params["model.train_modules"] == "4x8,8x16,16x32,32x64,head"
    assert params["model.init_modules"] == "3"
    params = client.get_run(outcomes[2].run_id).data.params
    assert params["init_from"] == outcomes[1].model_uri and params["model.train_modules"] == "32x64,64x128,head"
    for key, value in stage_64.items():
        module = key.split(".")[1]
        if module in ("4x8", "8x16", "16x32"):  # taken over from 32p and frozen
            assert torch.equal(value, stage_32[key]), key
        elif module == "32x64":  # taken over from 32p, then trained
            assert value.shape == stage_32[key].shape and not torch.equal(value, stage_32[key]), key
    assert stage_64["head.weight"].shape == (3, 4, 1, 1) and stage_32["head.weight"].shape == (3, 16, 1, 1)
    # 32p took over 16p's modules before training them all.
    assert any(not torch.equal(stage_32[k], stage_16[k]) for k in stage_16 if k.startswith("modules_by_res.4x8."))


@pytest.fixture(scope="module")
def gta5_store(tmp_path_factory, ray_session):
    """Two toy scenes at 256x512 in the GTA5 layout (train/images, train/labels as colours)."""
    from pipeline.data.toy import generate_toy_dataset
    from pipeline.preprocessing.config import parse_preprocess_config
    from pipeline.preprocessing.job import run

    root = tmp_path_factory.mktemp("gta5")
    generate_toy_dataset(root / "drawn", num_train=2, num_val=0, seed=5, size=(256, 512))
    for kind in ("images", "labels"):
        (root / "source" / "train" / kind).mkdir(parents=True)
    for index, photo in enumerate(sorted((root / "drawn" / "leftImg8bit" / "train").glob("*/*.png"))):
        label = next((root / "drawn" / "gtFine" / "train").glob(f"*/{photo.name[:-len('_leftImg8bit.png')]}"
                                                                 f"_gtFine_color.png"))
        shutil.copy(photo, root / "source" / "train" / "images" / f"{index:05d}.png")
        shutil.copy(label, root / "source" / "train" / "labels" / f"{index:05d}.png")
    run(parse_preprocess_config(["--source", str(root / "source"), "--out", str(root / "store"),
                                 "--format", "gta5", "--resolutions", "256x512"]))
    return root / "store"


def test_a_gta5_store_gets_the_gta5_row(gta5_store, capsys):
    """docs/recipe.md#the-recipe-table: GTA_Diversity_256p.py's own row, picked from the store's source format.
    With random (torchvision-layout) VGG weights it is not the starting row: the plan says so."""
    assert open_store(gta5_store).manifest["source"]["format"] == "gta5"
    plan = make_plan(config_from_argv(["--store", str(gta5_store), "--preset", "crn-256p", "--vgg-weights", "random"]))
    assert plan.recipe.loss_weights == "gta5-256p" and plan.train_samples == 2
    described = plan.describe()
    assert described["recipe.dataset"] == "gta5" and described["recipe.loss_weights"] == "gta5-256p"
    assert (plan.config.loss_weights, plan.config.recalibrate_after_epoch) == ("uncalibrated", 1)
    assert "gta5-256p belongs to the authors' MatConvNet VGG-19" in described["loss.layer_weights_rule"]
    assert entrypoint(train_main)(["--store", str(gta5_store), "--preset", "crn-256p", "--vgg-weights", "random",
                                   "--dry-run"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["resolved"]["recipe.loss_weights"] == "gta5-256p"
    assert printed["resolved"]["loss.layer_weights_rule"] == described["loss.layer_weights_rule"]
    assert {(r["preset"], r["dataset"]) for r in printed["recipe_table"]} >= {("crn-256p", "gta5"),
                                                                              ("crn-256p", "cityscapes")}
