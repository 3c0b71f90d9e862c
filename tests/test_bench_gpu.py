"""The GPU check (bench/bench_gpu.py) run on the CPU with tiny presets, so its GPU path cannot rot.

    .venv/bin/python -m pytest tests/test_bench_gpu.py -q

The same functions `make bench-gpu` runs on a GPU, called with device="cpu" and the CPU
settings (crn-tiny at 32x64 for 256p, crn-small for 1024p), bf16 autocast included.
References: a convolution's FLOPs counted by hand, the same step without activation
checkpointing (its gradients), the loss going down over steps, the peak table's rows.
"""
from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from bench import bench_gpu
from bench.flops import count_flops
from bench.peaks import dense_bf16_peak
from bench.run_all import REQUIRED_FIELDS
from crn.model import CRN
from crn.presets import make_config
from pipeline.training.config import parse_train_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SETTINGS = bench_gpu.CPU
DEVICE = "cpu"


def check_figures(figures: list[dict], names: set[str]) -> None:
    assert {f["name"] for f in figures} == names
    for f in figures:
        assert set(REQUIRED_FIELDS) | {"device"} <= set(f), f
        assert math.isfinite(f["value"]), f
        assert f["device"].startswith("cpu"), f


@pytest.fixture(scope="module")
def step_results() -> bench_gpu.StepResults:
    return bench_gpu.training_step_figures(SETTINGS, DEVICE)


def test_flops_of_a_convolution_equal_the_count_by_hand():
    n, c_in, c_out, h, w = 2, 3, 5, 8, 16
    x = torch.randn(n, c_in, h, w, requires_grad=True)
    weight = torch.randn(c_out, c_in, 3, 3, requires_grad=True)
    forward = 2 * n * c_out * h * w * c_in * 9  # a multiply-add per weight per output pixel, as 2 FLOPs
    assert count_flops(lambda: F.conv2d(x, weight, padding=1)) == forward
    # backward: the input gradient and the weight gradient, each as much work as the forward pass
    assert count_flops(lambda: F.conv2d(x, weight, padding=1).sum().backward()) == 3 * forward


def test_generator_forward_flops_equal_the_count_by_hand():
    config = make_config(SETTINGS.preset, bench_gpu.NUM_CLASSES)
    expected, previous = 0, 0
    for (height, width), channels in zip(config.resolutions, config.widths):
        in_channels = previous + config.num_classes  # upsampled features, then the labels
        expected += 2 * height * width * 9 * (in_channels * channels + channels * channels)  # conv1, conv2
        previous = channels
    expected += 2 * height * width * previous * 3 * config.num_outputs  # the 1x1 head
    model = CRN(config)
    onehot = torch.zeros(1, config.num_classes, height, width)
    with torch.no_grad():
        assert count_flops(lambda: model(onehot)) == expected


def test_peak_table_takes_the_longest_matching_name():
    assert dense_bf16_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert dense_bf16_peak("NVIDIA H100 PCIe") == 756e12
    assert dense_bf16_peak("NVIDIA H200") == 989e12
    assert dense_bf16_peak("NVIDIA A100-SXM4-80GB") == 312e12
    assert dense_bf16_peak("NVIDIA L4") == 121e12
    assert dense_bf16_peak("NVIDIA L40S") == 362e12
    assert dense_bf16_peak("NVIDIA GeForce RTX 4090") == 165e12
    assert dense_bf16_peak("cpu: AMD EPYC") is None


def test_training_step_part_measures_a_real_bf16_step(step_results, capsys):
    check_figures(step_results.figures, {
        "gpu_train_step_tflop", "gpu_train_step_s", "gpu_train_step_tflops", "gpu_channels_last_speedup",
        "gpu_train_step_memory_gib", "gpu_checkpointing_time_ratio", "gpu_checkpointing_memory_ratio"})
    # The generator's forward, its backward (about twice that) and VGG-19 on K + 1 images.
    config = make_config(SETTINGS.preset, bench_gpu.NUM_CLASSES)
    generator_forward = count_flops(lambda: CRN(config)(torch.zeros(1, config.num_classes, *config.top_resolution)))
    assert step_results.flops > 3 * generator_forward
    by_name = {f["name"]: f["value"] for f in step_results.figures}
    assert by_name["gpu_train_step_tflop"] == step_results.flops / 1e12
    assert by_name["gpu_train_step_tflops"] == pytest.approx(step_results.flops / step_results.timing.seconds / 1e12)
    for timing in (step_results.timing, step_results.checkpointed):
        assert len(timing.losses) >= SETTINGS.warmup_steps + timing.steps
        assert all(math.isfinite(loss) for loss in timing.losses)
        assert timing.losses[-1] < timing.losses[0], timing.losses  # Adam on one batch: the loss goes down


def test_activation_checkpointing_gives_the_same_gradients_under_bf16_autocast():
    grads = []
    for checkpointing in (False, True):
        step = bench_gpu.make_training_step(SETTINGS.preset, DEVICE, checkpointing=checkpointing, channels_last=True)
        step()  # the gradients of this step stay on the parameters after Adam's update
        grads.append([p.grad for p in step.model.parameters()])
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(checkpointed, plain, rtol=1e-5, atol=1e-5)


def test_large_step_part_fits_and_trains_the_recipes_modules():
    figures = bench_gpu.large_step_figures(SETTINGS, DEVICE)
    check_figures(figures, {"gpu_1024p_fits", "gpu_1024p_step_s", "gpu_1024p_memory_gib"})
    assert {f["name"]: f["value"] for f in figures}["gpu_1024p_fits"] == 1.0
    assert "32x64,64x128,head" in figures[0]["compared"]


def test_synthesis_part_runs_the_real_job_against_the_bare_forward_pass(ray_session, tmp_path):
    figures = bench_gpu.synthesis_figures(SETTINGS, DEVICE, tmp_path)
    check_figures(figures, {"gpu_synth_forward_images_per_s", "gpu_synth_job_images_per_s",
                            "gpu_synth_job_end_to_end_images_per_s", "gpu_synth_job_vs_forward"})
    assert all(f["value"] > 0 for f in figures)
    assert len(list((tmp_path / "out" / "images").rglob("*.png"))) == SETTINGS.synth_samples * 4  # crn-tiny: K=4


def test_ddp_part_says_in_one_line_that_it_needs_two_gpus(capsys, tmp_path):
    assert bench_gpu.ddp_figures(SETTINGS, DEVICE, tmp_path) == []
    assert capsys.readouterr().err == "bench_gpu: DDP: skipped, 0 GPU(s) here and a 2-rank step needs 2\n"


def test_compiled_step_runs_as_the_compile_option_applies_it(step_results, monkeypatch):
    # Inductor's C++ build of this step took 342 s on the 2-core machine, AOTAutograd's tracing
    # alone 15 s: here torch.compile captures the graphs (Dynamo) and runs them as they are,
    # which exercises how the bench and --compile apply it. On a GPU `make bench-gpu` times
    # the real thing.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    figures = bench_gpu.compile_figures(SETTINGS, DEVICE, step_results)
    check_figures(figures, {"gpu_compile_speedup", "gpu_compile_first_step_s", "gpu_compile_loss_difference"})
    assert {f["name"]: f["value"] for f in figures}["gpu_compile_loss_difference"] < 1e-3


def test_compile_is_a_training_option_off_by_default():
    argv = ["--store", "somewhere"]
    assert parse_train_config(argv).compile is False
    assert parse_train_config(argv + ["--compile"]).compile is True


def test_without_a_gpu_the_cpu_run_is_announced(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on this machine; also where a GPU is
    monkeypatch.setattr(bench_gpu, "measure", lambda settings, device: [settings, device])
    assert bench_gpu.run() == [bench_gpu.CPU, "cpu"]
    assert "no CUDA GPU" in capsys.readouterr().err
