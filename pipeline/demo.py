"""The end-to-end demo on the embedded defaults: toy data -> store -> segmenter and CRN -> evaluation,
gate and synthesis, with a summary of how good the images are.

    make demo                                   # or: python -m jobs.demo
    python -m jobs.demo --dry-run               # print the plan and exit

Everything runs on this machine with no set-up: Ray starts locally, MLflow tracks into a
SQLite file under the work folder, files go to local folders. Each stage is the real job,
called the way `ray job submit -- python jobs/<job>.py ...` would call it:

1. `pipeline.data.toy` draws a street-scene data set in the Cityscapes layout, and
   preprocessing (pipeline.preprocessing.job) turns it into a multi-resolution Parquet store;
2. a segmenter (LR-ASPP MobileNetV3) learns the toy photos with Ray Train and is registered
   (pipeline.segmenter.job): the toy data has no standard segmenter;
3. the CRN trains with Ray Train and is registered as `candidate` (pipeline.training.job);
4. the evaluation (pipeline.evaluation.job) synthesizes the validation label maps, scores
   them with the segmenter against the real photos' scores, and `--promote` makes the
   version `champion` only if it beats the current one under the same protocol;
5. synthesis (pipeline.synthesis.job) renders the validation split with
   `models:/<name>@champion` (reusing the evaluated images when it is the same model) and
   writes the HTML gallery, which lists the scores;
6. the utility job (pipeline.utility.job) synthesizes the training label maps with the
   champion and trains the same segmenter on those images: demo_utility = its mIoU on the
   real validation photos / that of stage 2's segmenter (reused, not retrained). The
   augmentation run (real + synthesized) is left out to keep the demo within its budget;
7. `summary.json` beside the gallery: demo_miou_ratio = mIoU(synthesized) / mIoU(real
   photos) on the validation split, demo_utility, FID or why not, diversity, each stage's
   seconds.

The defaults are sized so that `make demo` in a fresh clone, the install included, stays
within 15 minutes on a 2-core CPU; docs/recipe.md#the-demos-settings says why each was chosen.
Re-running the same command resumes: the data set and store are reused, each training picks
up from its last checkpoint (a finished one is reused), synthesis writes only missing images.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pipeline.data.store import VAL_SPLIT
from pipeline.data.toy import make_toy_store
from pipeline.options import AUTO, at_least, dry_run_option, from_argv, option, positive, to_dict
from pipeline.runtime import init_ray, tracking_uri, work_dir
from pipeline.training.config import LR_SCHEDULES

DEMO_EXPERIMENT = "crn-demo"
DEMO_PRESETS = {  # preset -> store resolutions (scenes are drawn at 128x256); the last is the preset's top
    "crn-tiny": "16x32,32x64",
    "crn-small": "32x64,64x128",
}
SCENE_SIZE = (128, 256)
SUMMARY_FILE = "summary.json"
STAGES = 7


@dataclass
class DemoConfig:
    out: str = option("", "folder for everything the demo writes; default: <work dir>/demo")
    preset: str = option("crn-tiny", "CRN preset: crn-tiny makes 32x64 images, crn-small 64x128 (4x the compute)",
                         choices=sorted(DEMO_PRESETS))
    num_outputs: int = option(2, "K images per label map (the diversity score compares them)", check=at_least(1))
    steps: int = option(2000, "CRN training steps (batch 1)", check=at_least(1))
    lr: float = option(5e-4, "CRN Adam learning rate at the start (the paper's 1e-4 needs many more steps)",
                       check=positive)
    lr_schedule: str = option("cosine", "CRN learning rate schedule: cosine decays to 0 at the last step, so the "
                                        "figure does not hang on where the weights happen to stand at a constant rate "
                                        "(docs/recipe.md#the-demos-settings)", choices=LR_SCHEDULES)
    segmenter_steps: int = option(400, "segmenter training steps (batch 8)", check=at_least(1))
    num_workers: int = option(1, "Ray Train workers (DDP ranks) for both trainings", check=at_least(1))
    threads_per_worker: int = option(1, "torch threads per training worker. One: on a 2-core machine shared with "
                                        "other work, two spin-waiting threads ran a step up to 6x slower than one; "
                                        "the other core feeds the worker", check=at_least(1))
    train_scenes: int = option(96, "toy training scenes to draw", check=at_least(1))
    val_scenes: int = option(32, "toy validation scenes to draw, synthesize and score", check=at_least(2))
    vgg_weights: str = option(AUTO, "loss network weights: imagenet, random, a .pth file, or auto (imagenet if "
                                      "torchvision's cache has them, else random, said loudly)")
    fid_weights: str = option(AUTO, "FID Inception weights (pytorch-fid's): a file, auto (<torch hub dir>/checkpoints/ if "
                                    "there), or none")
    dry_run: bool = dry_run_option("the resolved plan")


def parse_demo_config(argv: Sequence[str] | None) -> DemoConfig:
    return from_argv(DemoConfig, argv, prog="python -m jobs.demo", description=__doc__.split("\n\n")[0])


def choose_vgg_weights(requested: str) -> str:
    """`auto` means ImageNet weights if torchvision's cache holds them; otherwise random, loudly."""
    if requested != AUTO:
        return requested
    from crn.vgg import imagenet_cache_path

    if imagenet_cache_path().exists():
        return "imagenet"
    print(f"NOTE: no VGG-19 ImageNet weights at {imagenet_cache_path()}: the demo trains with a RANDOM "
          "loss network (recorded in the MLflow run). Put the file there for the real perceptual loss.")
    return "random"


def progress_line_every(steps: int) -> int:
    """Steps between a training's progress lines: about ten lines a training (MLflow still gets
    every step's losses)."""
    return max(1, steps // 10)


class StageClock:
    """Seconds spent in each stage, in order."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._start = time.perf_counter()

    def stage(self, name: str, title: str) -> None:
        self._close()
        self.seconds[name] = 0.0
        print(f"\n[{len(self.seconds)}/{STAGES}] {title}", flush=True)

    def stop(self) -> dict[str, float]:
        self._close()
        self.seconds["total"] = round(sum(self.seconds.values()), 1)
        return self.seconds

    def _close(self) -> None:
        now = time.perf_counter()
        if self.seconds:
            self.seconds[next(reversed(self.seconds))] = round(now - self._start, 1)
        self._start = now


def run(config: DemoConfig) -> dict:
    """Every stage in turn; returns the summary (or, for a dry run, the plan)."""
    out = Path(config.out or work_dir() / "demo").resolve()
    source, store = out / "toy-source", out / "store"
    vgg = choose_vgg_weights(config.vgg_weights)
    resolutions = DEMO_PRESETS[config.preset]
    resolution = resolutions.split(",")[-1]
    model_name = f"crn-toy-{resolution}"
    plan = {"config": to_dict(config), "source": str(source), "store": str(store), "vgg_weights": vgg,
            "model_name": model_name, "mlflow": tracking_uri()}
    if config.dry_run:
        return plan

    from crn.resolution import Resolution
    from pipeline.evaluation import job as evaluation_job
    from pipeline.evaluation.config import EvaluateConfig
    from pipeline.segmenter import job as segmenter_job
    from pipeline.segmenter.config import SegmenterTrainConfig
    from pipeline.synthesis import job as synthesis_job
    from pipeline.synthesis.config import SynthesizeConfig
    from pipeline.training import job as train_job
    from pipeline.training.config import TrainConfig
    from pipeline.utility import job as utility_job
    from pipeline.utility.config import UtilityConfig

    clock = StageClock()
    clock.stage("data", f"toy data set -> {source}, preprocessed -> {store}")
    init_ray(dashboard=True)  # one Ray instance for every stage; training needs the dashboard
    make_toy_store(store, source, num_train=config.train_scenes, num_val=config.val_scenes, size=SCENE_SIZE,
                   resolutions=resolutions)
    storage = str(out / "ray_results")

    clock.stage("segmenter", f"training the segmenter that scores the images ({config.segmenter_steps} steps, "
                             "Ray Train)")
    segmenter = segmenter_job.run(SegmenterTrainConfig(  # resolved by the job (pipeline.segmenter.config.resolve)
        store=str(store), resolution=Resolution.parse(resolution), steps=config.segmenter_steps,
        num_workers=config.num_workers, threads_per_worker=config.threads_per_worker, storage_path=storage,
        experiment=DEMO_EXPERIMENT, log_every=progress_line_every(config.segmenter_steps)))

    clock.stage("train", f"training {config.preset} (K={config.num_outputs}) for {config.steps} steps (Ray Train, "
                         f"{config.num_workers} worker(s))")
    trained = train_job.run(TrainConfig(
        store=str(store), preset=config.preset, num_outputs=config.num_outputs, steps=config.steps, lr=config.lr,
        lr_schedule=config.lr_schedule,
        num_workers=config.num_workers, threads_per_worker=config.threads_per_worker, vgg_weights=vgg,
        experiment=DEMO_EXPERIMENT, model_name=model_name, storage_path=storage, checkpoint_every=250,
        image_every=250, log_every=progress_line_every(config.steps)))

    version_uri = f"models:/{model_name}/{trained.model_version}"
    clock.stage("evaluate", f"evaluating {version_uri} on the validation split, then the registry gate")
    evaluation = evaluation_job.run(EvaluateConfig(
        model=version_uri, store=str(store), split=VAL_SPLIT, segmenter=segmenter.uri, fid_weights=config.fid_weights,
        synthesized=str(out / "synthesized" / f"v{trained.model_version}"), experiment=DEMO_EXPERIMENT, promote=True))
    champion = evaluation.gate.champion_after

    gallery_dir = out / "synthesized" / f"v{champion}"
    clock.stage("synthesize", f"synthesizing the validation split with models:/{model_name}@champion (version "
                              f"{champion}) -> {gallery_dir}")
    synthesis_job.run(SynthesizeConfig(model=f"models:/{model_name}@champion", store=str(store), split=VAL_SPLIT,
                                       output=str(gallery_dir), experiment=DEMO_EXPERIMENT))

    clock.stage("utility", f"utility: the segmenter trained on the champion's images of the training label maps "
                           f"({config.segmenter_steps} steps), tested on the real photos")
    utility = utility_job.run(UtilityConfig(  # the same segmenter settings as stage 2, whose run it reuses
        model=f"models:/{model_name}/{champion}", store=str(store), steps=config.segmenter_steps,
        skip_augmentation=True, synthesized=str(out / "synthesized" / f"v{champion}-train"),
        num_workers=config.num_workers, threads_per_worker=config.threads_per_worker, storage_path=storage,
        experiment=DEMO_EXPERIMENT, log_every=progress_line_every(config.segmenter_steps)))
    stage_seconds = clock.stop()

    summary = {
        "demo_miou_ratio": evaluation.metrics["miou_ratio"],
        "demo_utility": utility.utility,
        "utility_run": utility.run_id,
        "metrics": evaluation.metrics,  # every metric of pipeline.evaluation.metrics, by name
        "notes": evaluation.notes,  # why a metric has no value
        "evaluated_model": version_uri,
        "champion": f"models:/{model_name}/{champion}",
        "gate": evaluation.gate.reason,
        "protocol_id": evaluation.protocol_id,
        "segmenter": segmenter.uri,
        "split": VAL_SPLIT,
        "val_scenes": config.val_scenes,
        "preset": config.preset,
        "num_outputs": config.num_outputs,
        "steps": config.steps,
        "vgg_weights": vgg,
        "stage_seconds": stage_seconds,
        "gallery": str(gallery_dir / "gallery.html"),
        "evaluation_run": evaluation.run_id,
        "mlflow": tracking_uri(),
    }
    (gallery_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=1) + "\n")
    print(f"\n[{STAGES}/{STAGES}] summary -> {gallery_dir / SUMMARY_FILE}\n{json.dumps(summary, indent=1)}")
    print("\nDone. Look at:")
    print(f"  gallery     {gallery_dir / 'gallery.html'}")
    print(f"  images      {gallery_dir / 'images'}")
    print(f"  MLflow UI   .venv/bin/mlflow ui --backend-store-uri {tracking_uri()}   (then http://127.0.0.1:5000)")
    print(f"  paint page  .venv/bin/python jobs/serve.py --model models:/{model_name}@champion --store {store} --open"
          f"   (serves the champion; the page is http://127.0.0.1:8000/)")
    return summary
