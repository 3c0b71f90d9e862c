"""The evaluation's record: `evaluations/<protocol id>.json` beside the synthesized images.

    {"format": "crn-evaluation/2", "protocol_id", "protocol", "convention",
     "model": {uri, name, version, sha256} (null for the oracle: the real photos were scored),
     "segmenter": {uri, kind, version, sha256}, "metrics": {name: value}, "notes": {metric: why no value},
     "per_class": [{"class", <each metric's per-class columns>}], "mlflow_run_id"}

One record per protocol the evaluation scored; the same JSON goes into the MLflow run as
`evaluations/<protocol id>.json`. This module writes and reads the files; the synthesis
gallery lists what `read_records` finds, so the page shows every evaluation of its images.
"""
from __future__ import annotations

import json

import pyarrow.fs as pafs

from pipeline.evaluation.metrics import MetricResult
from pipeline.fs import filesystem_for, join, read_bytes, uri_join, write_bytes_atomically

EVALUATION_FORMAT = "crn-evaluation/2"
EVALUATIONS_DIR = "evaluations"  # inside the synthesis output folder


def per_class_rows(class_names: list[str], result: MetricResult) -> list[dict]:
    """One row per scored class: its name and every metric's per-class value."""
    return [{"class": name, **{column: values[c] for column, values in result.per_class.items()}}
            for c, name in enumerate(class_names)]


def evaluation_record(plan, scored, result: MetricResult, run_id: str) -> dict:
    """The record of one protocol (`scored`, a pipeline.evaluation.plan.ScoredProtocol) of an
    evaluation (pipeline.evaluation.plan.EvaluationPlan), with its results."""
    model = plan.model
    return {
        "format": EVALUATION_FORMAT,
        "protocol_id": scored.protocol.id,
        "protocol": scored.protocol.to_dict(),
        "convention": scored.name,
        "model": model and {"uri": plan.config.model, "name": model.name, "version": model.version,
                            "sha256": model.sha256},
        "segmenter": {"uri": plan.segmenter.uri, "kind": plan.segmenter.kind, "version": plan.segmenter.version,
                      "sha256": plan.segmenter.sha256},
        "metrics": result.values,
        "notes": {name: note for name, note in result.notes.items() if note},
        "per_class": per_class_rows(plan.schema.scored_class_names, result),
        "mlflow_run_id": run_id,
    }


def write_record(synthesized: str, record: dict) -> str:
    """Write the record atomically beside the images; returns its location."""
    fs, root = filesystem_for(synthesized)
    name = f"{record['protocol_id']}.json"
    write_bytes_atomically(fs, join(root, EVALUATIONS_DIR, name), (json.dumps(record, indent=1) + "\n").encode())
    return uri_join(synthesized, EVALUATIONS_DIR, name)


def read_records(fs: pafs.FileSystem, root: str) -> list[dict]:
    """Every evaluation record in an output folder, by protocol id; files that are not records
    of this format are passed over."""
    selector = pafs.FileSelector(join(root, EVALUATIONS_DIR), allow_not_found=True)
    records = []
    for info in sorted(fs.get_file_info(selector), key=lambda i: i.path):
        if not info.path.endswith(".json"):
            continue
        try:
            record = json.loads(read_bytes(fs, info.path))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("format") == EVALUATION_FORMAT:
            records.append(record)
    return records


def format_metrics(values: dict[str, float | None], notes: dict[str, str]) -> str:
    """"miou 0.512; fid 41.30; diversity 0.0812": every metric in one line, a note for a missing one."""
    shown = []
    for name, value in values.items():
        if value is None:
            shown.append(notes.get(name) or f"{name} n/a")
        else:
            shown.append(f"{name} {value:.4g}")
    return "; ".join(shown)
