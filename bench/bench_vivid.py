"""The vivid targets' cost (--photo-tone vivid): seconds per 512x1024 photograph.

    python -m bench.run_all bench_vivid          # with the other benchmarks' table
    python -m bench.bench_vivid [--quick]        # this one alone

pipeline.data.vivid.vivid on toy street scenes of 512x1024 (pipeline.data.toy), one after
the other in this process, as one Ray Data task runs it: CPU time (user + system, which
other work on a shared host does not inflate) and wall-clock time per image, and the share
of the CPU time spent in the two sparse WLS solves. Beside it, the CPU time of the step a
plain store spends on the same photograph at that size (the bicubic resize from 1024x2048),
so the ratio says how much --photo-tone vivid adds to preprocessing at 512x1024.
"""
from __future__ import annotations

import statistics
import sys
import time

import numpy as np
from PIL import Image

from crn.resolution import Resolution
from pipeline.data.vivid import GAMMA, SMOOTHINGS, srgb_to_lab, vivid, wls_filter
from pipeline.data.prepare import downsample_photo
from pipeline.data.toy import render_scene

SIZE = Resolution(512, 1024)
FULL = {"images": 5}
QUICK = {"images": 2}


def _cpu() -> float:
    return time.process_time()


def run(quick: bool = False) -> list[dict]:
    sizes = QUICK if quick else FULL
    rng = np.random.default_rng(0)
    sources = [Image.fromarray(render_scene(rng, 2 * SIZE.height, 2 * SIZE.width)[0]) for _ in range(sizes["images"])]
    photos = [downsample_photo(source, SIZE) for source in sources]

    cpu, wall, solve_cpu = [], [], []
    for photo in photos:
        start_cpu, start_wall = _cpu(), time.perf_counter()
        vivid(photo)
        cpu.append(_cpu() - start_cpu)
        wall.append(time.perf_counter() - start_wall)
        # The two solves again, alone, on the same lightness.
        lightness = srgb_to_lab((photo / 255.0) ** GAMMA)[..., 0]
        start = _cpu()
        for smoothing in SMOOTHINGS:
            wls_filter(lightness, smoothing)
        solve_cpu.append(_cpu() - start)
    resize_cpu = []
    for source in sources:
        start = _cpu()
        downsample_photo(source, SIZE)
        resize_cpu.append(_cpu() - start)

    what = f"{len(photos)} toy scenes of {SIZE}, one process"
    return [
        {"name": "vivid_cpu_s_per_image_512x1024", "value": statistics.median(cpu), "unit": "s", "goal": "n/a",
         "compared": f"CPU time of pipeline.data.vivid.vivid per image, median of {what} "
                     f"(range {min(cpu):.1f}-{max(cpu):.1f} s)"},
        {"name": "vivid_wall_s_per_image_512x1024", "value": statistics.median(wall), "unit": "s", "goal": "n/a",
         "compared": f"wall-clock time per image, median of {what} (moves with the host's load)"},
        {"name": "vivid_wls_solve_share", "value": sum(solve_cpu) / sum(cpu), "unit": "fraction", "goal": "n/a",
         "compared": "CPU time in the two sparse WLS solves (SciPy SuperLU) over the whole vivid step"},
        {"name": "vivid_vs_plain_resize_cpu", "value": statistics.median(cpu) / statistics.median(resize_cpu),
         "unit": "x", "goal": "n/a",
         "compared": f"CPU time of vivid vs the plain store's bicubic resize of the same photo from 1024x2048 "
                     f"to {SIZE} ({1000 * statistics.median(resize_cpu):.0f} ms)"},
    ]


if __name__ == "__main__":
    for figure in run(quick="--quick" in sys.argv[1:]):
        print(f"{figure['name']}: {figure['value']:.3f} {figure['unit']}  ({figure['compared']})")
