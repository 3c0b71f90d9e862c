"""The end-to-end demo on the embedded defaults: toy data -> store -> training -> synthesis.

    make demo                                   # or: python -m jobs.demo --steps 300
    python -m jobs.demo --dry-run               # print the plan and exit

Everything runs on this machine with no set-up: Ray starts locally, MLflow tracks into a
SQLite file under the work folder, files go to local folders. Each stage is the real job,
called the way `ray job submit -- python jobs/<job>.py ...` would call it:

1. `pipeline.data.toy` draws a street-scene data set in the Cityscapes layout, and
   preprocessing (pipeline.data.preprocess) turns it into a multi-resolution Parquet store;
2. training (pipeline.training.job) trains the `crn-small` preset (64x128, K=4) with Ray Train and registers
   the model in MLflow with the alias `candidate`;
3. the new version is promoted to `champion` (the evaluation job's place in design.md);
4. synthesis (pipeline.synthesis.job) renders the validation label maps with `models:/<name>@champion`
   and writes an HTML gallery.

Re-running the same command resumes: the data set and store are reused, training picks up
from its last checkpoint, synthesis writes only missing images.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pipeline.data.toy import make_toy_store
from pipeline.options import at_least, from_argv, option, to_dict
from pipeline.runtime import init_ray, setup_mlflow, tracking_uri, work_dir
from pipeline.synthesis import job as synthesis_job
from pipeline.synthesis.config import parse_synthesize_config
from pipeline.training import job as train_job
from pipeline.training.config import parse_train_config

DEMO_EXPERIMENT = "crn-demo"
DEMO_MODEL_NAME = "crn-toy-64x128"


@dataclass
class DemoConfig:
    out: str = option("", "folder for everything the demo writes; default: <work dir>/demo")
    steps: int = option(300, "training steps of crn-small (one to a few seconds each on 2 cores)", check=at_least(1))
    num_workers: int = option(1, "Ray Train workers (DDP ranks)", check=at_least(1))
    train_scenes: int = option(64, "toy training scenes to draw", check=at_least(1))
    val_scenes: int = option(8, "toy validation scenes to draw and synthesize", check=at_least(1))
    vgg_weights: str = option("auto", "loss network weights: imagenet, random, a .pth file, or auto (imagenet if "
                                      "torchvision's cache has them, else random, said loudly)")
    dry_run: bool = option(False, "print the resolved plan and exit")


def parse_demo_config(argv: Sequence[str] | None) -> DemoConfig:
    return from_argv(DemoConfig, argv, prog="python -m jobs.demo", description=__doc__.split("\n\n")[0])


def choose_vgg_weights(requested: str) -> str:
    """`auto` means ImageNet weights if torchvision's cache holds them; otherwise random, loudly."""
    if requested != "auto":
        return requested
    from crn.vgg import imagenet_cache_path

    if imagenet_cache_path().exists():
        return "imagenet"
    print(f"NOTE: no VGG-19 ImageNet weights at {imagenet_cache_path()}: the demo trains with a RANDOM "
          "loss network (recorded in the MLflow run). Put the file there for the real perceptual loss.")
    return "random"


def run(config: DemoConfig) -> dict:
    """Every stage in turn; returns the plan (paths, weights, tracking URI). A dry run only plans."""
    out = Path(config.out or work_dir() / "demo").resolve()
    source, store, synth = out / "toy-source", out / "store", out / "synthesized"
    vgg = choose_vgg_weights(config.vgg_weights)
    plan = {"config": to_dict(config), "source": str(source), "store": str(store), "synthesized": str(synth),
            "vgg_weights": vgg, "mlflow": tracking_uri()}
    if config.dry_run:
        return plan

    print(f"[1/5] toy data set -> {source}, preprocessed -> {store}")
    init_ray(dashboard=True)  # one Ray instance for every stage; training needs the dashboard
    make_toy_store(store, source, num_train=config.train_scenes, num_val=config.val_scenes, size=(128, 256),
                   resolutions="32x64,64x128")

    print(f"[2/4] training crn-small for {config.steps} steps (Ray Train, {config.num_workers} worker(s))")
    outcome = train_job.run(parse_train_config([
        "--store", str(store), "--preset", "crn-small", "--steps", str(config.steps),
        "--num-workers", str(config.num_workers), "--vgg-weights", vgg, "--experiment", DEMO_EXPERIMENT,
        "--model-name", DEMO_MODEL_NAME, "--storage-path", str(out / "ray_results"),
        "--checkpoint-every", "100", "--image-every", "100",
    ]))

    print(f"[3/4] promoting models:/{DEMO_MODEL_NAME}/{outcome.model_version} to @champion")
    from mlflow import MlflowClient

    setup_mlflow(DEMO_EXPERIMENT)
    MlflowClient(tracking_uri()).set_registered_model_alias(DEMO_MODEL_NAME, "champion", outcome.model_version)

    print(f"[4/4] synthesizing the validation split -> {synth}")
    synthesis_job.run(parse_synthesize_config([
        "--model", f"models:/{DEMO_MODEL_NAME}@champion", "--store", str(store), "--split", "val",
        "--output", str(synth), "--experiment", DEMO_EXPERIMENT,
    ]))

    print("\nDone. Look at:")
    print(f"  gallery     {synth / 'gallery.html'}")
    print(f"  images      {synth / 'images'}")
    print(f"  MLflow UI   .venv/bin/mlflow ui --backend-store-uri {tracking_uri()}   (then http://127.0.0.1:5000)")
    return plan
