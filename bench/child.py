"""A benchmark's baseline measured in a child process set up as the pipeline's CPU workers are.

    figures = run_child("bench.bench_train_step", {"quick": True})   # in the benchmark
    serve_child(measure)                                              # in its `__main__`

A Ray worker that runs the model on CPUs (a training worker, a synthesis actor) starts with
pipeline.runtime.CPU_WORKER_MALLOC_ENV in its environment, and Ray runs it at a niceness of
its own (15 by default). A baseline measured in the benchmark's own process would have
neither, and would find the heap of whatever benchmark ran before it; the allocator settings
only hold for every thread when they are there from the process's start. So the baseline
runs in `python -m <module> --child <options as JSON>`, which prints its result as JSON on
its last line of output.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.runtime import CPU_WORKER_MALLOC_ENV

REPO = Path(__file__).resolve().parent.parent
CHILD_FLAG = "--child"


def run_child(module: str, options: dict[str, Any]) -> Any:
    """`module`'s `measure(**options)`, run in a child process; its result."""
    env = {**os.environ, **CPU_WORKER_MALLOC_ENV,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", module, CHILD_FLAG, json.dumps(options)], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def serve_child(measure: Callable[..., Any]) -> None:
    """In a benchmark's `__main__`: started by `run_child`, print `measure(**options)` and exit."""
    if sys.argv[1:2] == [CHILD_FLAG]:
        print(json.dumps(measure(**json.loads(sys.argv[2]))))
        sys.exit(0)


def ray_worker_niceness() -> int:
    """The niceness Ray gives its workers (RAY_worker_niceness; 15 by default)."""
    import ray

    return ray.get(ray.remote(num_cpus=0)(lambda: os.getpriority(os.PRIO_PROCESS, 0)).remote())


def lower_priority(niceness: int) -> None:
    """Run this process at `niceness` (never higher priority than it has), every thread it has
    and so every thread they start later (torch's pool): Linux sets niceness per thread."""
    threads = os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else ["0"]
    for thread in threads:
        os.setpriority(os.PRIO_PROCESS, int(thread), max(niceness, os.getpriority(os.PRIO_PROCESS, int(thread))))
