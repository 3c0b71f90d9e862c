"""FID as three libraries compute it, each from a local weights file, chosen by name.

    FID = |mu_r - mu_s|^2 + Tr(S_r + S_s - 2 (S_r S_s)^(1/2))

over the 2048 pool features of the Inception network of the FID paper (TensorFlow's
inception-2015-12-05, ported to PyTorch). The libraries agree on that formula and on the
network's weights, yet give different numbers for the same images, because each feeds the
network its own way and takes the square root its own way:

    backend          network input                                  distance
    pytorch-fid      ToTensor (/255), bilinear to 299x299           float64 mean and np.cov, scipy sqrtm
                     (F.interpolate, align_corners=False), 2x - 1   (eps on the diagonal if not finite)
    torch-fidelity   uint8, bilinear to 299x299 as TensorFlow 1     float32 mean, float64 np.cov,
                     resized, (x - 128) / 128                       eigenvalues of S_r S_s
    torchmetrics     uint8, antialiased bilinear to 299x299,        float64 running sums, eigenvalues,
                     (x - 128) / 128, torch-fidelity's layers       the result rounded to float32

Published Cityscapes FIDs (SPADE, OASIS, ...) come from pytorch-fid, hence the default; the
backend is recorded with the number. Each backend runs its library's own network and distance
function; what the libraries do around them in their end-to-end loops (decoding images,
stacking batches, mean and covariance) is done here the same way, so the numbers equal the
libraries' own to 1e-6 (tests/test_fid_backends.py, with batches of other sizes than the
libraries'). An image's features do not depend on the batch it was in (bit for bit on CPU), so
any split over Ray actors gives the same features. They do depend on the batch's memory layout:
a channels-last view of the same pixels changes them in the last float32 bit, which with few
images moves FID by ~5e-7, so batches are laid out as the libraries' data loaders stack them.

One weights layout: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` and torch-fidelity's
`weights-inception-2015-12-05-6726825d.pth` (which torchmetrics downloads too) are loaded
strictly into networks with the same state-dict keys and shapes: torchvision's Inception3
names without AuxLogits, with a 1008-way fc. torch-fidelity's converter writes no BatchNorm
`num_batches_tracked` entries, which PyTorch's loader fills in for such plain dicts, so those
may be absent. Any of the files therefore loads into any backend; the number still depends on
the backend. Nothing is downloaded: the network comes from the file, and a file that is not
this network is a one-line error before any library reads it (torch-fidelity would unpickle it
with weights_only=False).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from pipeline.options import AUTO

FID_FEATURES = 2048  # the pool3 features of the FID paper
DEFAULT_FID_BACKEND = "pytorch-fid"
OPTIONAL_KEY = "num_batches_tracked"  # BatchNorm's counter: unused in eval mode, absent from torch-fidelity's file


class FIDBackend(ABC):
    """One library's FID: its network from a weights file, its features, its distance."""

    name: str = ""
    weights_file: str = ""  # the name the library's own loader looks for in <torch hub dir>/checkpoints/

    def load(self, weights_path: str | Path) -> torch.nn.Module:
        """The library's network with the file's weights, in eval mode (ValueError for a wrong file)."""
        return self._network(Path(weights_path), read_inception_weights(weights_path))

    @torch.no_grad()
    def features(self, network: torch.nn.Module, images: np.ndarray, batch_size: int) -> np.ndarray:
        """uint8 RGB [N, H, W, 3] -> float64 [N, 2048], `batch_size` images per forward pass. The
        libraries' features are float32; float64 holds them exactly."""
        # [B, 3, H, W] contiguous, as the libraries' data loaders stack decoded images: a permuted
        # (channels-last) tensor takes other kernels, which round differently (module docstring).
        images = torch.from_numpy(np.asarray(images, dtype=np.uint8)).permute(0, 3, 1, 2)
        batches = [self._batch_features(network, images[i:i + batch_size].contiguous())
                   for i in range(0, len(images), batch_size)]
        return torch.cat(batches).double().numpy() if batches else np.zeros((0, FID_FEATURES))

    @abstractmethod
    def _network(self, path: Path, state: dict[str, torch.Tensor]) -> torch.nn.Module:
        """The network from a checked file (`state` is its content)."""

    @abstractmethod
    def _batch_features(self, network: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> float32 [B, 2048]."""

    @abstractmethod
    def distance(self, real: np.ndarray, synthesized: np.ndarray) -> float:
        """FID between two feature sets [N, 2048] (N >= 2 each), as the library computes it."""


class PytorchFID(FIDBackend):
    """mseitzer/pytorch-fid: `InceptionV3` over its FID blocks, `calculate_frechet_distance`."""

    name = "pytorch-fid"
    weights_file = "pt_inception-2015-12-05-6726825d.pth"

    def _network(self, path: Path, state: dict[str, torch.Tensor]) -> torch.nn.Module:
        inception = fid_inception_v3_structure()
        inception.load_state_dict(state)  # strict, as pytorch-fid's fid_inception_v3() loads it
        return _pytorch_fid_wrapper(inception).eval()

    def _batch_features(self, network: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        # torchvision's ToTensor: float32 by division (not multiplication) by 255.
        return network(images.float().div(255))[0].squeeze(3).squeeze(2)

    def distance(self, real: np.ndarray, synthesized: np.ndarray) -> float:
        from pytorch_fid.fid_score import calculate_frechet_distance

        # calculate_activation_statistics from features instead of files (its array is float64).
        real, synthesized = (np.asarray(f, dtype=np.float64) for f in (real, synthesized))
        return float(calculate_frechet_distance(np.mean(real, axis=0), np.cov(real, rowvar=False),
                                                np.mean(synthesized, axis=0), np.cov(synthesized, rowvar=False)))


class TorchFidelity(FIDBackend):
    """toshas/torch-fidelity: `FeatureExtractorInceptionV3` ('2048'), `fid_statistics_to_metric`."""

    name = "torch-fidelity"
    weights_file = "weights-inception-2015-12-05-6726825d.pth"

    def _network(self, path: Path, state: dict[str, torch.Tensor]) -> torch.nn.Module:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        # The name calculate_metrics registers this extractor under.
        return FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))

    def _batch_features(self, network: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        return network(images)[0]

    def distance(self, real: np.ndarray, synthesized: np.ndarray) -> float:
        from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric

        # Its statistics start from the float32 features its extractor returns (the mean stays float32).
        real, synthesized = (fid_features_to_statistics(torch.from_numpy(np.asarray(f, dtype=np.float32)))
                             for f in (real, synthesized))
        return float(fid_statistics_to_metric(real, synthesized, verbose=False)[KEY_METRIC_FID])


class TorchMetrics(FIDBackend):
    """Lightning-AI/torchmetrics: `FrechetInceptionDistance(feature=2048)`, its extractor and compute()."""

    name = "torchmetrics"
    weights_file = TorchFidelity.weights_file  # it downloads torch-fidelity's file

    def _network(self, path: Path, state: dict[str, torch.Tensor]) -> torch.nn.Module:
        from torchmetrics.image.fid import FrechetInceptionDistance

        return FrechetInceptionDistance(feature=FID_FEATURES, feature_extractor_weights_path=str(path)).inception

    def _batch_features(self, network: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        return network(images)

    def distance(self, real: np.ndarray, synthesized: np.ndarray) -> float:
        from torchmetrics.image.fid import FrechetInceptionDistance

        metric = FrechetInceptionDistance(feature=_GivenFeatures(np.asarray(real).shape[1]))
        # float32 in, as from its extractor: it sums in float64 and rounds the result to the input's dtype.
        metric.update(torch.from_numpy(np.asarray(real, dtype=np.float32)), real=True)
        metric.update(torch.from_numpy(np.asarray(synthesized, dtype=np.float32)), real=False)
        return float(metric.compute())


class _GivenFeatures(torch.nn.Module):
    """The "feature extractor" of a FrechetInceptionDistance fed with features already computed."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


FID_BACKENDS: dict[str, FIDBackend] = {backend.name: backend
                                       for backend in (PytorchFID(), TorchFidelity(), TorchMetrics())}


def fid_backend(name: str) -> FIDBackend:
    if name not in FID_BACKENDS:
        raise ValueError(f"unknown FID backend '{name}' (choices: {', '.join(FID_BACKENDS)})")
    return FID_BACKENDS[name]


# ---------------------------------------------------------------- pytorch-fid's network without its download


def fid_inception_v3_structure() -> torch.nn.Module:
    """pytorch-fid's `fid_inception_v3()` before it loads weights: torchvision's Inception3 (1008
    classes, no aux head) with its FID blocks. That function always downloads, hence this."""
    from pytorch_fid.inception import FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2, _inception_v3

    inception = _inception_v3(num_classes=1008, aux_logits=False, weights=None)
    inception.Mixed_5b = FIDInceptionA(192, pool_features=32)
    inception.Mixed_5c = FIDInceptionA(256, pool_features=64)
    inception.Mixed_5d = FIDInceptionA(288, pool_features=64)
    inception.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    inception.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    inception.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    inception.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    inception.Mixed_7b = FIDInceptionE_1(1280)
    inception.Mixed_7c = FIDInceptionE_2(2048)
    return inception


def _pytorch_fid_wrapper(inception: torch.nn.Module) -> torch.nn.Module:
    """pytorch-fid's `InceptionV3([3])` around `inception`: its forward (resize, scaling, blocks),
    with the blocks its __init__ would cut from the network it downloads."""
    from pytorch_fid.inception import InceptionV3

    class _InceptionV3(InceptionV3):
        def __init__(self):
            torch.nn.Module.__init__(self)  # not InceptionV3.__init__: it downloads the weights
            self.resize_input, self.normalize_input = True, True
            self.output_blocks, self.last_needed_block = [3], 3  # the 2048 pool features only
            self.blocks = torch.nn.ModuleList([
                torch.nn.Sequential(inception.Conv2d_1a_3x3, inception.Conv2d_2a_3x3, inception.Conv2d_2b_3x3,
                                    torch.nn.MaxPool2d(kernel_size=3, stride=2)),
                torch.nn.Sequential(inception.Conv2d_3b_1x1, inception.Conv2d_4a_3x3,
                                    torch.nn.MaxPool2d(kernel_size=3, stride=2)),
                torch.nn.Sequential(inception.Mixed_5b, inception.Mixed_5c, inception.Mixed_5d, inception.Mixed_6a,
                                    inception.Mixed_6b, inception.Mixed_6c, inception.Mixed_6d, inception.Mixed_6e),
                torch.nn.Sequential(inception.Mixed_7a, inception.Mixed_7b, inception.Mixed_7c,
                                    torch.nn.AdaptiveAvgPool2d(output_size=(1, 1))),
            ])
            self.requires_grad_(False)

    return _InceptionV3()


# ---------------------------------------------------------------- the weights file


@lru_cache(maxsize=1)
def inception_layout() -> dict[str, tuple[int, ...]]:
    """State-dict key -> shape of the FID Inception, the one layout all three backends load."""
    return {key: tuple(value.shape) for key, value in fid_inception_v3_structure().state_dict().items()}


def read_inception_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The file's state dict, checked strictly against the FID Inception's keys and shapes
    (`num_batches_tracked` may be absent); ValueError in one line naming the file otherwise."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a torch file, or pickled objects besides tensors
        raise ValueError(f"{path}: not a PyTorch weights file ({_first_line(exc)})") from None
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ValueError(f"{path}: holds a {type(state).__name__}, not a state dict of tensors")
    problems = layout_problems(state, inception_layout())
    if problems:
        raise ValueError(f"{path}: not the FID Inception weights ({problems})")
    return state


def layout_problems(state: dict[str, torch.Tensor], layout: dict[str, tuple[int, ...]]) -> str:
    """What keeps `state` from loading strictly into a network of `layout`, in a few words ('' if nothing)."""
    missing = [key for key in layout if key not in state and not key.endswith(OPTIONAL_KEY)]
    unexpected = [key for key in state if key not in layout]
    reshaped = [f"{key} is {list(state[key].shape)}, not {list(layout[key])}"
                for key in layout if key in state and tuple(state[key].shape) != layout[key]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} keys missing, e.g. {missing[0]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[0]}")
    if reshaped:
        more = f" (and {len(reshaped) - 1} more of another shape)" if len(reshaped) > 1 else ""
        problems.append(reshaped[0] + more)
    return "; ".join(problems)


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def default_inception_path(backend: str = DEFAULT_FID_BACKEND) -> Path:
    """Where the backend's library (through torch.hub) would have cached its weights file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / fid_backend(backend).weights_file


def find_inception_weights(requested: str, backend: str = DEFAULT_FID_BACKEND) -> tuple[Path | None, str]:
    """(checked weights file or None, reason when None) for `--fid-weights auto|none|<file>`.

    An unknown backend, a named file that does not exist and a file that is not the FID
    Inception are the user's mistakes (ValueError); a missing file under `auto` only means no FID.
    """
    weights_file = fid_backend(backend).weights_file
    if requested == "none":
        return None, "FID not computed: --fid-weights none"
    if requested == AUTO:
        path = default_inception_path(backend)
        if not path.is_file():
            return None, (f"FID not computed: no Inception weights at {path} ({backend}'s {weights_file}; "
                          "put the file there or pass --fid-weights FILE; nothing is downloaded)")
    else:
        path = Path(requested).expanduser()
        if not path.is_file():
            raise ValueError(f"no such file {requested}")
    read_inception_weights(path)
    return path.resolve(), ""
