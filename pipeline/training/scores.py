"""Scores while training (`--eval-every N`): each Nth checkpoint scored beside the workers.

    spec = scoring_spec(config, run_dir)                                   # the driver: checks, the subset
    scoring = CheckpointScoring.start(config, spec, run_id, total_steps)    # before fit()
    fit(..., checkpoint_watcher=scoring)             # MLflowReports calls it after each report
    scoring.finish(client, run_id, config.eval_wait_s)   # after fit(): the rest waited for and logged
    step, score = selected_step(run_id, "miou")      # the best scored checkpoint (pipeline.training.job)

Why beside and not inside: the DDP step must never wait for an evaluation, so the scoring
is a Ray task with its own CPUs (`--eval-cpus`), submitted when a checkpoint is reported.
The task does what jobs/evaluate.py does, on a fixed subset of the validation split
(`--eval-samples`): the evaluation's own plan (pipeline.evaluation.plan.make_plan, handed
the checkpoint already opened and the subset), the images made by the same function the
synthesis actors run (crn.inference.generate_images, same batch size and thread count),
and the same scoring actor and merge (pipeline.evaluation.scoring.score_here). It runs
them in its own process rather than as Ray Data jobs, so it uses the CPUs it reserved and
no others, and logs nothing itself.

Who writes what: MLflow's store wants one writer at a time, and that is the Train
controller while `fit()` runs (pipeline.trainer.MLflowReports): at each report it collects
the scores that have arrived and logs them as `eval.<metric>` on the checkpoint's step. The
tasks are owned by a small actor (`ScoreBoard`), which outlives the controller, so the
driver, once `fit()` returns, waits for the rest (`--eval-wait-s`) and logs them itself.

Resume: the steps already in the run's `eval.miou` history are not scored again. A task
lost with its worker is retried (`MAX_RETRIES`); one that fails (or whose scores do not
arrive in time) is recorded in the run as a tag `crn.eval_error.<step>`, and training goes
on. With `--select-by miou|fid` the task also keeps a copy of the checkpoint it scored
under `<run>/scored/` (Ray Train keeps only the newest `--keep-checkpoints`), the board
deletes each copy that is no longer the best, and the job registers the best one.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import first_line
from pipeline.evaluation.config import EvaluateConfig
from pipeline.fs import filesystem_for, uri_join, write_bytes_atomically
from pipeline.training.config import LAST, TrainConfig

logger = logging.getLogger(__name__)

PREFIX = "eval."  # the scores' metric names: eval.miou, eval.fid, eval.real_miou, ...
SCORED_METRIC = "eval.miou"  # every scoring has it: its history lists the steps already scored
PROTOCOL_TAG = "crn.eval_protocol_id"
ERROR_TAG = "crn.eval_error."  # + step: why that checkpoint has no score
MAX_RETRIES = 2  # a scoring task lost with its worker or node is run again this often
KEPT_DIR = "scored"  # <run>/scored/checkpoint_<step>.pt: the copies --select-by chooses from
SYNTHESIS_BATCH = 8  # the synthesis job's default batch: the same pixels as jobs/evaluate.py's images


def higher_is_better(select_by: str) -> bool:
    return select_by == "miou"


@dataclass(frozen=True)
class ScoringSpec:
    """What each scoring task needs: the evaluation's config (resolved on the driver), the subset, where copies go."""

    config: EvaluateConfig
    sample_ids: list[str]  # sorted
    threads: int
    kept_dir: str  # "" unless --select-by chooses among scored checkpoints


def evaluation_config(config: TrainConfig) -> EvaluateConfig:
    """The jobs/evaluate.py config these scores follow (`config` resolved). It names the real
    photos (--oracle) at the training's resolution until a checkpoint takes their place: that
    plan checks the same store, segmenter and FID weights, and its protocol id is a model's."""
    from pipeline.evaluation.config import resolve

    return resolve(EvaluateConfig(oracle=True, resolution=str(config.resolution), store=config.store,
                                  segmenter=config.eval_segmenter, protocols=[config.eval_protocol],
                                  fid_weights=config.eval_fid_weights, num_actors=1,
                                  threads_per_actor=max(1, math.floor(config.eval_cpus))))


def scoring_spec(config: TrainConfig, run_dir: str) -> ScoringSpec:
    """Checked on the driver, in one line each: the store's validation split, the segmenter
    and its classes, the FID weights, the subset."""
    from pipeline.data.store import open_store
    from pipeline.evaluation.plan import make_plan

    evaluate = evaluation_config(config)
    ids = open_store(config.store).sample_ids(evaluate.split)
    subset = ids[: config.eval_samples] if config.eval_samples else ids
    make_plan(evaluate, sample_ids=subset)  # its one-line errors now, not in every task
    return ScoringSpec(evaluate, subset, evaluate.threads_per_actor,
                       uri_join(run_dir, KEPT_DIR) if config.select_by != LAST else "")


def for_checkpoint(config: EvaluateConfig, path: str) -> EvaluateConfig:
    return dataclasses.replace(config, oracle=False, resolution="", model=path)


def kept_path(kept_dir: str, step: int) -> str:
    return uri_join(kept_dir, f"checkpoint_{step:08d}.pt")


def score_checkpoint(spec: ScoringSpec, step: int, checkpoint) -> dict[str, Any]:
    """The scoring task's body: {"step", "values", "notes", "protocol_id"} for one Ray Train checkpoint."""
    import torch

    from crn.inference import generate_images
    from pipeline.evaluation.job import results
    from pipeline.evaluation.plan import make_plan
    from pipeline.evaluation.scoring import score_here, subset_rows
    from pipeline.registry.models import open_model
    from pipeline.training.loop import CHECKPOINT_FILE

    torch.set_num_threads(spec.threads)  # as the synthesis actors: the count is part of the pixels
    with checkpoint.as_directory() as folder:
        path = Path(folder) / CHECKPOINT_FILE
        model = open_model(str(path))
        if spec.kept_dir:
            fs, kept = filesystem_for(kept_path(spec.kept_dir, step))
            write_bytes_atomically(fs, kept, path.read_bytes())
    plan = make_plan(for_checkpoint(spec.config, str(path)), model=model, sample_ids=spec.sample_ids)
    rows = subset_rows(plan)
    images = generate_images(model.build(), rows["label"], batch_size=SYNTHESIS_BATCH)
    variants = {str(sample_id): image for sample_id, image in zip(rows["sample_id"], images)}
    outcomes, _ = results(plan, score_here(plan, variants, spec.threads, rows))
    primary = outcomes[plan.primary.name]
    return {"step": step, "values": {k: v for k, v in primary.values.items() if v is not None},
            "notes": primary.notes, "protocol_id": plan.primary.protocol.id}


class ScoreBoard:
    """A Ray actor (no CPUs of its own) that owns the scoring tasks: it submits them, hands
    back what finished, and deletes the kept copies that are no longer the best."""

    def __init__(self, spec: ScoringSpec, cpus: float, select_by: str, earlier: dict[int, float]):
        import ray

        self.spec, self.select_by = spec, select_by
        self.task = ray.remote(score_checkpoint).options(num_cpus=cpus, max_retries=MAX_RETRIES,
                                                          retry_exceptions=False)
        self.pending: dict[Any, int] = {}  # ObjectRef -> step
        self.seen = set(earlier)  # steps scored or submitted, earlier attempts' included
        self.selection = {step: v for step, v in earlier.items() if not math.isnan(v)}  # the --select-by metric
        self.best = self._best()

    def submit(self, step: int, checkpoint) -> bool:
        if step in self.seen:
            return False
        self.seen.add(step)
        self.pending[self.task.remote(self.spec, step, checkpoint)] = step
        return True

    def finished(self, timeout_s: float = 0.0) -> tuple[list[dict], list[int]]:
        """(results of the tasks done within `timeout_s`: scores or {"step", "error"}; the steps still running)."""
        import ray

        done = []
        if self.pending:
            done, _ = ray.wait(list(self.pending), num_returns=len(self.pending), timeout=timeout_s)
        out = []
        for ref in done:
            step = self.pending.pop(ref)
            try:
                out.append(ray.get(ref))
            except Exception as exc:  # a failed or lost task: reported in the run, never dropped
                cause = getattr(exc, "cause", None) or exc  # a RayTaskError's first line is only the task's name
                # Whole: a TorchScript error says what failed only at its end.
                out.append({"step": step, "error": f"{type(cause).__name__}: {str(cause).strip()}"})
        self._keep_best(out)
        return out, sorted(self.pending.values())

    def _best(self) -> int | None:
        if not self.selection:
            return None
        sign = 1 if higher_is_better(self.select_by) else -1
        return max(sorted(self.selection), key=lambda step: sign * self.selection[step])  # ties: the earliest

    def _keep_best(self, results: list[dict]) -> None:
        if not self.spec.kept_dir:
            return
        done = []
        for result in results:
            value = result.get("values", {}).get(self.select_by)
            if value is not None:
                self.selection[result["step"]] = value
            done.append(result["step"])
        previous, self.best = self.best, self._best()
        for step in {*done, previous} - {self.best, None}:
            fs, path = filesystem_for(kept_path(self.spec.kept_dir, step))
            try:
                fs.delete_file(path)
            except OSError:
                pass  # a failed task may have written nothing


class CheckpointScoring:
    """The training's side of the scores: submits each due checkpoint to the board and logs
    what arrived. Pickled into the Train controller (the board is an actor handle)."""

    def __init__(self, board, eval_every: int, total_steps: int):
        self.board, self.eval_every, self.total_steps = board, eval_every, total_steps

    @classmethod
    def start(cls, config: TrainConfig, spec: ScoringSpec, run_id: str, total_steps: int) -> "CheckpointScoring":
        import ray

        earlier = scored_steps(run_id, config.select_by)
        board = ray.remote(ScoreBoard).options(num_cpus=0).remote(spec, config.eval_cpus, config.select_by, earlier)
        return cls(board, config.eval_every, total_steps)

    def due(self, step: int) -> bool:
        return step % self.eval_every == 0 or step == self.total_steps

    def after_report(self, client, run_id: str, step: int, checkpoint) -> None:
        """In the controller, after each report: submit a due checkpoint, log the scores that arrived."""
        import ray

        if checkpoint is not None and self.due(step):
            self.board.submit.remote(step, checkpoint)
        results, _ = ray.get(self.board.finished.remote())
        log_results(client, run_id, results)

    def finish(self, client, run_id: str, wait_s: float) -> list[int]:
        """On the driver after fit(): wait up to `wait_s` for the scores still running, log
        them, record any given up on in the run; returns those steps."""
        import ray

        results, running = ray.get(self.board.finished.remote(0.0))
        if running:
            print(f"scores: waiting up to {wait_s:g} s (--eval-wait-s) for the scoring of step(s) "
                  f"{', '.join(map(str, running))}", flush=True)
            more, running = ray.get(self.board.finished.remote(float(wait_s)))
            results += more
        log_results(client, run_id, results)
        if running:
            client.set_tag(run_id, "crn.eval_unfinished",
                           f"step(s) {', '.join(map(str, running))} not scored within --eval-wait-s {wait_s:g} s")
        ray.kill(self.board)
        return running


def log_results(client, run_id: str, results: list[dict]) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(PREFIX + name, float(value), now, r["step"]) for r in results
               for name, value in r.get("values", {}).items()]
    if metrics:
        client.log_batch(run_id, metrics=metrics)
        client.set_tag(run_id, PROTOCOL_TAG, next(r["protocol_id"] for r in results if "values" in r))
    for result in results:
        if "error" in result:
            logger.warning("scoring of step %s failed: %s", result["step"], first_line(result["error"]))
            client.set_tag(run_id, f"{ERROR_TAG}{result['step']}", result["error"][-5000:])  # MLflow's tag limit
        for name, note in result.get("notes", {}).items():
            client.set_tag(run_id, f"crn.eval_note.{name}", note[:5000])


def scored_steps(run_id: str, metric: str) -> dict[int, float]:
    """{step: eval.<metric>} already in the run (every step scored, with NaN where that metric is absent)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    steps = {m.step: math.nan for m in client.get_metric_history(run_id, SCORED_METRIC)}
    if metric != LAST:
        steps.update({m.step: m.value for m in client.get_metric_history(run_id, PREFIX + metric)})
    return steps


def selected_step(run_id: str, select_by: str) -> tuple[int, float] | None:
    """(step, score) of the best scored checkpoint in the run, or None if none was scored."""
    scores = {step: value for step, value in scored_steps(run_id, select_by).items() if not math.isnan(value)}
    if not scores:
        return None
    sign = 1 if higher_is_better(select_by) else -1
    step = max(sorted(scores), key=lambda s: sign * scores[s])  # ties: the earliest, as the board keeps it
    return step, scores[step]
