"""The end-to-end demo on the embedded defaults: toy data -> store -> training -> synthesis.

    make demo                                   # or: python -m jobs.demo --steps 300
    python -m jobs.demo --dry-run               # print the plan and exit

Everything runs on this machine with no set-up: Ray starts locally, MLflow tracks into a
SQLite file under the work folder, files go to local folders. Each stage is the real job,
called the way `ray job submit -- python jobs/<job>.py ...` would call it:

1. `pipeline.toy` draws a street-scene data set in the Cityscapes layout;
2. `jobs.preprocess` turns it into a multi-resolution Parquet store;
3. `jobs.train` trains the `crn-small` preset (64x128, K=4) with Ray Train and registers
   the model in MLflow with the alias `candidate`;
4. the new version is promoted to `champion` (the evaluation job's place in design.md);
5. `jobs.synthesize` renders the validation label maps with `models:/<name>@champion`
   and writes an HTML gallery.

Re-running the same command resumes: the data set and store are reused, training picks up
from its last checkpoint, synthesis writes only missing images.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from jobs.common import entrypoint, init_ray, setup_mlflow, tracking_uri, work_dir

DEMO_EXPERIMENT = "crn-demo"
DEMO_MODEL_NAME = "crn-toy-64x128"


@dataclass
class DemoConfig:
    out: str  # folder for the demo's data set, store, checkpoints and images
    steps: int = 300  # training steps (crn-small: one to a few seconds each on 2 cores)
    num_workers: int = 1  # Ray Train workers
    train_scenes: int = 64  # toy training scenes
    val_scenes: int = 8  # toy validation scenes (the ones synthesized)
    vgg_weights: str = "auto"  # imagenet when torchvision's cache has them, else random (said loudly)
    dry_run: bool = False


def parse_args(argv: Sequence[str] | None) -> DemoConfig:
    d = DemoConfig(out="")
    p = argparse.ArgumentParser(prog="python -m jobs.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(work_dir() / "demo"), help="folder for everything the demo writes")
    p.add_argument("--steps", type=int, default=d.steps, help="training steps of crn-small")
    p.add_argument("--num-workers", type=int, default=d.num_workers, help="Ray Train workers (DDP ranks)")
    p.add_argument("--train-scenes", type=int, default=d.train_scenes, help="toy training scenes to draw")
    p.add_argument("--val-scenes", type=int, default=d.val_scenes, help="toy validation scenes to draw and synthesize")
    p.add_argument("--vgg-weights", default=d.vgg_weights,
                   help="loss network weights: imagenet, random, a .pth file, or auto (imagenet if cached)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved plan and exit")
    return DemoConfig(**vars(p.parse_args(argv)))


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


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    out = Path(config.out).resolve()
    source, store, synth = out / "toy-source", out / "store", out / "synthesized"
    vgg = choose_vgg_weights(config.vgg_weights)
    plan = {"config": asdict(config), "source": str(source), "store": str(store), "synthesized": str(synth),
            "vgg_weights": vgg, "mlflow": tracking_uri()}
    if config.dry_run:
        print(json.dumps(plan, indent=1))
        return 0

    from jobs import preprocess, synthesize, train
    from pipeline.toy import generate_toy_dataset

    print(f"[1/5] toy data set -> {source}")
    if not (source / "leftImg8bit").exists():
        generate_toy_dataset(source, num_train=config.train_scenes, num_val=config.val_scenes, seed=0, size=(128, 256))

    print(f"[2/5] preprocessing -> {store}")
    init_ray(dashboard=True)  # one Ray instance for every stage; training needs the dashboard
    preprocess.main(["--source", str(source), "--out", str(store), "--resolutions", "32x64,64x128"])

    print(f"[3/5] training crn-small for {config.steps} steps (Ray Train, {config.num_workers} worker(s))")
    outcome = train.run(train.config_from_argv([
        "--store", str(store), "--preset", "crn-small", "--steps", str(config.steps),
        "--num-workers", str(config.num_workers), "--vgg-weights", vgg, "--experiment", DEMO_EXPERIMENT,
        "--model-name", DEMO_MODEL_NAME, "--storage-path", str(out / "ray_results"),
        "--checkpoint-every", "100", "--image-every", "100",
    ]))

    print(f"[4/5] promoting models:/{DEMO_MODEL_NAME}/{outcome.model_version} to @champion")
    from mlflow import MlflowClient

    setup_mlflow(DEMO_EXPERIMENT)
    MlflowClient().set_registered_model_alias(DEMO_MODEL_NAME, "champion", outcome.model_version)

    print(f"[5/5] synthesizing the validation split -> {synth}")
    synthesize.main([
        "--model", f"models:/{DEMO_MODEL_NAME}@champion", "--store", str(store), "--split", "val",
        "--output", str(synth), "--experiment", DEMO_EXPERIMENT,
    ])

    print("\nDone. Look at:")
    print(f"  gallery     {synth / 'gallery.html'}")
    print(f"  images      {synth / 'images'}")
    print(f"  MLflow UI   .venv/bin/mlflow ui --backend-store-uri {tracking_uri()}   (then http://127.0.0.1:5000)")
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint(main)(sys.argv[1:]))
