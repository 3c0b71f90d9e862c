"""Each FID backend against its own library's end-to-end computation; no Ray, nothing downloaded.

    .venv/bin/python -m pytest tests/test_fid_backends.py -q

The references are the libraries' entry points on the same random Inception weights and the
same images: pytorch-fid's `calculate_fid_given_paths` and torch-fidelity's `calculate_metrics`
on two folders of PNG files, torchmetrics' `FrechetInceptionDistance` fed uint8 tensors. The
project computes the features in batches of other sizes than the library's (as Ray actors
would) and calls the backend's distance; the two must agree to 1e-6. With 8 images per side
the covariances are singular and the FID small: one float32 rounding step in half the features
moves it by about 5e-7, so agreement needs the libraries' features bit for bit (the same
decoded pixels, batches laid out as their data loaders stack them), not just close ones.
"""
from __future__ import annotations

import itertools
import re
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from eval_fixtures import write_random_inception_weights
from PIL import Image

from pipeline.evaluation.fid_backends import (DEFAULT_FID_BACKEND, FID_BACKENDS, fid_inception_v3_structure,
                                              find_inception_weights, inception_layout)
from pipeline.evaluation.metrics.base import MetricSettings
from pipeline.evaluation.metrics.fid import FIDMetric, InceptionFeatures, fid_from_features

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              # scipy's sqrtm (pytorch-fid) on the singular covariance products of 8 images says so.
              pytest.mark.filterwarnings("ignore:Matrix is singular:scipy.linalg.LinAlgWarning"),
              pytest.mark.filterwarnings("ignore:Matrix is ill-conditioned:scipy.linalg.LinAlgWarning")]

NUM_IMAGES = 8
LIBRARY_BATCH = 4  # the libraries' own loops: 4+4
PROJECT_BATCHES = {"real": 3, "synthesized": 6}  # the project's: 3+3+2 and 6+2 images
RELATIVE = 1e-6
LIVE_FEATURES = 256  # the others 0 for every image: eigenvalue-based FIDs then take a fraction of a second
CHOICES = re.escape("(choices: pytorch-fid, torch-fidelity, torchmetrics)")


def blotchy_images(rng: np.random.Generator, brightness: int) -> np.ndarray:
    """uint8 [N, 40, 80, 3]: 5x10 blocks of random colour plus pixel noise (not flat, not pure noise)."""
    blocks = rng.integers(0, 200, size=(NUM_IMAGES, 5, 10, 3))
    images = np.kron(blocks, np.ones((1, 8, 8, 1), dtype=np.int64)) + brightness
    return np.clip(images + rng.integers(-30, 30, size=images.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict:
    """The two sides as arrays and as folders of PNG files (lossless: the same pixels)."""
    rng = np.random.default_rng(0)
    sides = {"real": blotchy_images(rng, 0), "synthesized": blotchy_images(rng, 40)}
    folders = {}
    for side, arrays in sides.items():
        folders[side] = tmp_path_factory.mktemp(side)
        for i, image in enumerate(arrays):
            Image.fromarray(image).save(folders[side] / f"{i:03d}.png")  # sorted names: the arrays' order
    return {"arrays": sides, "folders": folders}


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    """A torch hub folder holding each backend's file under its published name (same seed: same
    weights), where pytorch-fid's load_state_dict_from_url finds it instead of downloading."""
    home = tmp_path_factory.mktemp("torch_home")
    checkpoints = home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    for name, backend in FID_BACKENDS.items():
        write_random_inception_weights(checkpoints / backend.weights_file, backend=name, live_features=LIVE_FEATURES)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(home))
        assert torch.hub.get_dir() == str(home / "hub")
        yield home


def weights_of(torch_home, backend: str):
    return torch_home / "hub" / "checkpoints" / FID_BACKENDS[backend].weights_file


def library_fid(backend: str, images: dict, weights) -> float:
    real, synthesized = (str(images["folders"][side]) for side in ("real", "synthesized"))
    if backend == "pytorch-fid":
        from pytorch_fid.fid_score import calculate_fid_given_paths

        return float(calculate_fid_given_paths([real, synthesized], LIBRARY_BATCH, "cpu", 2048, num_workers=0))
    if backend == "torch-fidelity":
        import torch_fidelity

        metrics = torch_fidelity.calculate_metrics(
            input1=real, input2=synthesized, fid=True, cuda=False, batch_size=LIBRARY_BATCH,
            feature_extractor_weights_path=str(weights), cache=False, save_cpu_ram=True, verbose=False)
        return float(metrics["frechet_inception_distance"])
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(weights))
    for side in ("real", "synthesized"):
        # [N, 3, H, W] as a DataLoader stacks images; a permuted view moves this FID by a float32 step.
        arrays = torch.from_numpy(images["arrays"][side]).permute(0, 3, 1, 2).contiguous()
        for i in range(0, NUM_IMAGES, LIBRARY_BATCH):
            metric.update(arrays[i:i + LIBRARY_BATCH], real=side == "real")
    return float(metric.compute())


@pytest.fixture(scope="module")
def fids(images, torch_home) -> dict[str, tuple[float, float]]:
    """Backend -> (the project's FID, the library's own)."""
    result = {}
    for backend in FID_BACKENDS:
        weights = weights_of(torch_home, backend)
        features = InceptionFeatures(weights, backend)
        real, synthesized = (features(images["arrays"][side], PROJECT_BATCHES[side])
                             for side in ("real", "synthesized"))
        result[backend] = (fid_from_features(real, synthesized, backend), library_fid(backend, images, weights))
    return result


@pytest.mark.parametrize("backend", list(FID_BACKENDS))
def test_each_backend_equals_its_library_end_to_end(fids, backend):
    ours, library = fids[backend]
    print(f"{backend}: project {ours!r}, library {library!r}, relative difference {abs(ours / library - 1):.2e}")
    assert np.isfinite(library) and library > 0
    assert ours == pytest.approx(library, rel=RELATIVE)


def test_the_backends_give_different_numbers(fids):
    values = {backend: ours for backend, (ours, _) in fids.items()}
    assert len(values) == 3
    for (a, value_a), (b, value_b) in itertools.combinations(values.items(), 2):
        assert value_a != pytest.approx(value_b, rel=1e-3), (a, b, values)


def test_the_metric_uses_its_settings_backend():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(6, 16)).astype(np.float32)
    synthesized = rng.normal(0.3, 1.0, size=(6, 2, 16)).astype(np.float32)  # K = 2 variants a sample
    ids = [f"s{i}" for i in range(6)]
    for backend, implementation in FID_BACKENDS.items():
        metric = FIDMetric(MetricSettings(num_scored_classes=3, fid=True, fid_backend=backend))
        metric.update(SimpleNamespace(sample_ids=ids, features_real=real, features_synthesized=synthesized))
        assert metric.compute().values["fid"] == implementation.distance(real, synthesized.reshape(12, 16))
    assert MetricSettings(num_scored_classes=3, fid=True).fid_backend == DEFAULT_FID_BACKEND == "pytorch-fid"
    with pytest.raises(ValueError, match=f"unknown FID backend 'clean-fid' {CHOICES}"):
        fid_from_features(real, real, "clean-fid")


# ---------------------------------------------------------------- the weights file


def test_the_three_backends_load_one_layout(torch_home):
    """Each backend loads the other file form strictly (with and without BatchNorm's
    num_batches_tracked), and the libraries' own networks have the layout checked here."""
    other_form = {"pytorch-fid": "torch-fidelity", "torch-fidelity": "pytorch-fid", "torchmetrics": "pytorch-fid"}
    for backend, implementation in FID_BACKENDS.items():
        network = implementation.load(weights_of(torch_home, other_form[backend]))
        if backend != "pytorch-fid":  # torch-fidelity's names are torchvision's; pytorch-fid nests them in blocks
            assert {key: tuple(value.shape) for key, value in network.state_dict().items()} == inception_layout()
    structure = fid_inception_v3_structure().state_dict()
    assert inception_layout() == {key: tuple(value.shape) for key, value in structure.items()}


@pytest.mark.parametrize("backend", list(FID_BACKENDS))
def test_find_inception_weights_per_backend(backend, tmp_path, monkeypatch, torch_home):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty torch hub folder
    expected = tmp_path / "hub" / "checkpoints" / FID_BACKENDS[backend].weights_file
    path, note = find_inception_weights("auto", backend)
    assert path is None
    assert note == (f"FID not computed: no Inception weights at {expected} ({backend}'s {expected.name}; "
                    "put the file there or pass --fid-weights FILE; nothing is downloaded)")
    expected.parent.mkdir(parents=True)
    shutil.copy(weights_of(torch_home, backend), expected)
    assert find_inception_weights("auto", backend) == (expected, "")
    assert find_inception_weights("none", backend) == (None, "FID not computed: --fid-weights none")
    elsewhere = shutil.copy(weights_of(torch_home, backend), tmp_path / "mine.pth")
    assert find_inception_weights(str(elsewhere), backend) == (elsewhere, "")
    with pytest.raises(ValueError, match="no such file"):
        find_inception_weights(str(tmp_path / "missing.pth"), backend)
    with pytest.raises(ValueError, match=f"unknown FID backend 'tf' {CHOICES}"):
        find_inception_weights("auto", "tf")


@pytest.fixture(scope="module")
def wrong_files(tmp_path_factory, torch_home) -> dict[str, tuple]:
    """Name -> (file, what the one-line error must say)."""
    from torchvision.models import inception_v3

    folder = tmp_path_factory.mktemp("wrong")
    imagenet = folder / "inception_v3_google-0cc3c7bd.pth"  # torchvision's ImageNet Inception: aux head, 1000 classes
    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), imagenet)
    truncated = folder / "truncated.pth"
    truncated.write_bytes(weights_of(torch_home, "pytorch-fid").read_bytes()[:100_000])
    wrapped = folder / "checkpoint.pth"
    torch.save({"state_dict": {"fc.weight": torch.zeros(1)}, "epoch": 3}, wrapped)
    return {"imagenet": (imagenet, (r"not the FID Inception weights \(\d+ unexpected keys, e.g. AuxLogits\.[^;]+; "
                                    r"fc\.weight is \[1000, 2048\], not \[1008, 2048\] "
                                    r"\(and 1 more of another shape\)\)$")),
            "truncated": (truncated, r"not a PyTorch weights file \("),
            "wrapped": (wrapped, r"holds a dict, not a state dict of tensors")}


@pytest.mark.parametrize("backend", list(FID_BACKENDS))
@pytest.mark.parametrize("kind", ["imagenet", "truncated", "wrapped"])
def test_a_wrong_weights_file_is_a_one_line_error(wrong_files, backend, kind):
    path, message = wrong_files[kind]
    for attempt in (lambda: find_inception_weights(str(path), backend), lambda: InceptionFeatures(path, backend)):
        with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: {message}") as error:
            attempt()
        assert "\n" not in str(error.value)
