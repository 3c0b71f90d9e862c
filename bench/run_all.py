"""Run the benchmarks in bench/, print one table, write bench/results.jsonl.

    python -m bench.run_all                  # every bench/bench_*.py (make bench)
    python -m bench.run_all --quick          # a fast pass: fewer repetitions, same figures
    python -m bench.run_all bench_train_step # only the named ones ("train_step" works too)

Each bench_<topic>.py has `run(quick: bool = False) -> list[dict]`; every dict is one figure
`{"name", "value", "unit", "goal", "compared"}` (docs/design.md#benchmark-records). The runner adds
`bench` (the module) and `time`, and rewrites the results file so that it holds the latest
figures of every benchmark: a run of one benchmark replaces only that benchmark's lines.
A benchmark that fails is reported in the table and makes the exit status non-zero; the
others still run.
"""
from __future__ import annotations

import argparse
import importlib
import json
import operator
import re
import sys
import time
import traceback
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results.jsonl"
REQUIRED_FIELDS = ("name", "value", "unit", "goal", "compared")
_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}


def discover() -> list[str]:
    return sorted(p.stem for p in BENCH_DIR.glob("bench_*.py"))


def goal_met(goal: str, value: float) -> str:
    """"yes"/"no" for goals like ">= 0.6"; "" when the goal is not a simple comparison."""
    match = re.fullmatch(r"\s*(>=|<=|==|>|<)\s*([-+0-9.eE]+)\s*", goal)
    if not match:
        return ""
    return "yes" if _OPS[match.group(1)](value, float(match.group(2))) else "no"


def run_one(module_name: str, quick: bool) -> list[dict]:
    module = importlib.import_module(f"bench.{module_name}")
    figures = module.run(quick=quick)
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    for figure in figures:
        missing = [k for k in REQUIRED_FIELDS if k not in figure]
        if missing:
            raise ValueError(f"{module_name}: figure {figure.get('name', '?')!r} lacks {missing}")
        figure["value"] = float(figure["value"])
        figure.update(bench=module_name, time=now, quick=quick)
    return figures


def print_table(figures: list[dict], failures: dict[str, str]) -> None:
    rows = [("figure", "value", "unit", "goal", "met", "compared")]
    for f in figures:
        rows.append((f["name"], f"{f['value']:.4g}", f["unit"], f["goal"], goal_met(f["goal"], f["value"]), f["compared"]))
    for name, error in failures.items():
        rows.append((name, "FAILED", "", "", "", error))
    widths = [max(len(str(row[i])) for row in rows) for i in range(5)]
    for row in rows:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)) + "  " + row[5])


def write_results(figures: list[dict], ran: list[str]) -> None:
    kept = []
    if RESULTS.exists():
        for line in RESULTS.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("bench") not in ran:
                kept.append(record)
    tmp = RESULTS.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(record) + "\n" for record in kept + figures))
    tmp.replace(RESULTS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="benchmarks to run (bench_<topic> or <topic>); default: all")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, for a fast check")
    args = parser.parse_args(argv)

    available = discover()
    names = [n if n.startswith("bench_") else f"bench_{n}" for n in args.names] or available
    unknown = [n for n in names if n not in available]
    if unknown:
        print(f"error: no benchmark {', '.join(unknown)} in {BENCH_DIR} (have: {', '.join(available)})", file=sys.stderr)
        return 2

    figures: list[dict] = []
    failures: dict[str, str] = {}
    for name in names:
        print(f"running {name}{' (quick)' if args.quick else ''} ...", flush=True)
        try:
            figures.extend(run_one(name, args.quick))
        except Exception as exc:  # keep going: one broken benchmark must not hide the others
            traceback.print_exc()
            failures[name] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    print()
    print_table(figures, failures)
    write_results(figures, [n for n in names if n not in failures])
    print(f"\nwrote {len(figures)} figures to {RESULTS}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
