"""What every job records in MLflow besides its own params and metrics.

- `start_job_run`: the job's run (every job is one run) with a description, the code's git
  commit and system metrics; the runs a process started are remembered (`started_runs`), so
  that a failed job can name them, with their URLs (`run_url`), before its error line
  (pipeline.runtime.entrypoint);
- `log_store_input`: a preprocessed store as the run's dataset input, named by its source
  and identified by its key (the digest of its sources and settings);
- `log_model_input`: the registered model version a run used on the run, and the run on
  the version (tags), so each finds the other.
"""
from __future__ import annotations

import os
import subprocess
import warnings
from dataclasses import dataclass

from pipeline.runtime import REPO_ROOT, setup_mlflow, tracking_uri


@dataclass(frozen=True)
class StartedRun:
    run_id: str
    experiment_id: str
    name: str


_started_runs: dict[str, StartedRun] = {}  # by run id, in the order started


def start_job_run(experiment: str, *, description: str, run_name: str | None = None, run_id: str | None = None,
                  tags: dict[str, str] | None = None):
    """The MLflow run of one job (every job is one run): in `experiment`, with a description,
    the code's git commit and system metrics (CPU, memory, GPU of the driver's machine).

    `run_id` resumes an earlier attempt's run instead of starting one."""
    import mlflow

    setup_mlflow(experiment)
    if run_id is not None:
        active = mlflow.start_run(run_id=run_id, log_system_metrics=True)
    else:
        active = mlflow.start_run(run_name=run_name, description=description, log_system_metrics=True,
                                  tags={"crn.git_commit": git_commit(), **(tags or {})})
    _started_runs.setdefault(active.info.run_id, StartedRun(active.info.run_id, active.info.experiment_id,
                                                            active.info.run_name or ""))
    return active


def started_runs() -> list[StartedRun]:
    """The runs `start_job_run` started (or resumed) in this process since `forget_started_runs`."""
    return list(_started_runs.values())


def forget_started_runs() -> None:
    _started_runs.clear()


def run_url(run: StartedRun, uri: str | None = None) -> str:
    """Where a person sees the run: on the tracking server, or, for a local store, in `mlflow ui`
    started on it (said after the URL)."""
    uri = uri or tracking_uri()
    path = f"#/experiments/{run.experiment_id}/runs/{run.run_id}"
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/{path}"
    return f"http://127.0.0.1:5000/{path} (after: mlflow ui --backend-store-uri {uri})"


def describe_started_runs() -> list[str]:
    """One line per run this process started: its name and URL (pipeline.runtime.entrypoint)."""
    return [f"MLflow run {run.name or run.run_id}: {run_url(run)}" for run in started_runs()]


def git_commit() -> str:
    """The commit the code comes from: `CRN_GIT_COMMIT` (set on the submitting side, see
    infra/submit.sh: `ray job submit --working-dir` uploads no .git), else the checkout's
    own (with "-dirty" when it has uncommitted changes), else "unknown"."""
    if os.environ.get("CRN_GIT_COMMIT"):
        return os.environ["CRN_GIT_COMMIT"]
    if not (REPO_ROOT / ".git").exists():
        return "unknown"
    try:
        commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=30, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def log_store_input(uri: str, store, split: str) -> None:
    """The store (pipeline.data.store.Store) as this run's dataset input, for `split`."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.exceptions import MlflowException

    source = (store.manifest.get("source") or {}).get("uri", "")
    name = f"{os.path.basename(source.rstrip('/')) or 'store'}:{split}"
    with warnings.catch_warnings():  # a local path "can be interpreted in multiple ways": all of them fit
        warnings.simplefilter("ignore", UserWarning)
        try:
            source_of_data = resolve_dataset_source(uri)
        except MlflowException:
            source_of_data = _storage_source(uri)
    dataset = MetaDataset(source=source_of_data, name=name, digest=store.manifest.get("key", "")[:20])
    mlflow.log_input(dataset, context=split, tags={"crn.store_fingerprint": store.manifest.get("key", ""),
                                                    "crn.samples": str(store.count(split))})


def _storage_source(uri: str):
    """An MLflow dataset source for a store location MLflow has no resolver for: it knows the
    schemes of its own artifact stores (paths, s3://, gs://, abfss://, ...), not every one
    pipeline.fs opens (abfs://, az://, gcs://). It records the location as given."""
    from mlflow.data.dataset_source import DatasetSource

    class StorageSource(DatasetSource):
        def __init__(self, location: str):
            self.uri = location

        @staticmethod
        def _get_source_type() -> str:
            return "storage"

        def load(self, **kwargs):
            raise NotImplementedError("open the store with pipeline.data.store.open_store")

        @staticmethod
        def _can_resolve(raw_source) -> bool:
            return False

        @classmethod
        def _resolve(cls, raw_source):
            return cls(str(raw_source))

        def to_dict(self) -> dict:
            return {"uri": self.uri}

        @classmethod
        def from_dict(cls, source_dict: dict):
            return cls(source_dict["uri"])

    return StorageSource(uri)


def log_model_input(model_name: str | None, version: str | None) -> None:
    """Link this run and the registered model version it used, both ways, by tags (MLflow's own
    model inputs are Databricks-only): the run names the version, the version its latest run.
    A plain checkpoint file has no version: nothing to link."""
    import mlflow

    if not model_name or not version:
        return
    mlflow.set_tags({"crn.model_name": model_name, "crn.model_version": version})
    mlflow.MlflowClient().set_model_version_tag(model_name, version, "crn.last_used_by_run",
                                                mlflow.active_run().info.run_id)
