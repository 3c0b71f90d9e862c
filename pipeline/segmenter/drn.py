"""DRN-D-105 with its authors' segmentation head: the field's Cityscapes segmenter, built in.

Image-synthesis papers on Cityscapes score their images with DRN-D-105 (Yu, Koltun and
Funkhouser, "Dilated Residual Networks", CVPR 2017) and the Cityscapes weights its authors
published, `drn_d_105_cityscapes.pth`. That file is a plain state dict of the `DRNSeg`
wrapper of their code (github.com/fyu/drn: drn.py, segment.py), so the modules here rebuild
exactly that structure, written from its facts, for the file to load with strict key and
shape checks:

- DRN, arch 'D', Bottleneck blocks, layers [1, 1, 3, 4, 23, 3, 1, 1], channels
  (16, 32, 64, 128, 256, 512, 512, 512). layer0 is a 7x7 conv, layer1, layer2, layer7 and
  layer8 are 3x3 conv -> BatchNorm -> ReLU stacks (`_make_conv_layers`; dilation 2 in layer7),
  layer3..layer6 are residual Bottleneck stages (`_make_layer`): strides 2, 2, 1, 1, dilations
  1, 1, 2, 4. The first Bottleneck of a stage gets the dilation pair (d // 2, d) when
  new_level, (d, d) otherwise, but a Bottleneck only uses the second number (its 3x3 conv),
  so every block of a stage has the stage's dilation. Output stride 8, 512 channels (out_dim).
- DRNSeg: `base` is the DRN's children without the classifier's avgpool and fc (so keys
  base.0 ... base.8), `seg` a 1x1 conv to the 19 classes, `up` a depthwise transposed conv
  (kernel 16, stride 8, padding 4) holding a fixed bilinear kernel, and the output is the
  log-softmax of up(seg(base(x))). The ReLUs stay modules inside the Sequentials, because
  their places number the keys (base.0.0 conv, base.0.1 BatchNorm, base.0.2 ReLU).

The published file was saved by PyTorch 0.2/0.3 and has no `num_batches_tracked` keys.
torch's BatchNorm adds them itself only when a state dict carries no version metadata; the
checks here compare the key set leaving out exactly those keys, and fill them in, so any
copy of the file (re-saved by a newer torch or not) loads the same way.

`DRNSegmenter` fits the segmenter contract (pipeline.segmenter.file): RGB float in 0..1, the
Cityscapes normalisation of the authors' training (datasets/cityscapes/info.json), and scores
cropped to the input's H x W. `up` gives 8 * ceil(H / 8) rows, the image's rows first: cropping
keeps each pixel's score where the network put it, where resizing to H x W would shift them.
"""
from __future__ import annotations

import io
import math
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.errors import UserError, first_line
from pipeline.fs import absolute

DRN_D_105 = "drn-d-105"
PUBLISHED_FILE = "drn_d_105_cityscapes.pth"
WHERE_TO_GET = (f"the published DRN-D-105 Cityscapes model ({PUBLISHED_FILE}, or drn-d-105_ms_cityscapes.pth as "
                f"SPADE used) is linked from the fyu/drn project's README (http://go.yf.io/drn-cityscapes-models); "
                f"nothing is downloaded; pass --segmenter {DRN_D_105}:<path to the file>")

LAYERS = (1, 1, 3, 4, 23, 3, 1, 1)
CHANNELS = (16, 32, 64, 128, 256, 512, 512, 512)
NUM_CLASSES = 19  # the Cityscapes train ids
# fyu/drn datasets/cityscapes/info.json: the training images' RGB mean and std, in 0..1.
CITYSCAPES_MEAN = (0.29010095242892997, 0.32808144844279574, 0.28696394422942517)
CITYSCAPES_STD = (0.1829540508368939, 0.18656561047509476, 0.18447508988480435)

UP_KERNEL = 16
UP_STRIDE = 8
UP_PADDING = 4
NUM_BATCHES_TRACKED = "num_batches_tracked"


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride, dilation) -> 1x1 (4x the width), each with BatchNorm, plus the shortcut."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=dilation,
                               dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x
        if self.downsample is not None:
            shortcut = self.downsample(x)
        return F.relu(out + shortcut)


def conv_layers(inplanes: int, channels: int, convs: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """DRN-D's plain stages: `convs` times 3x3 conv -> BatchNorm -> ReLU, the stride on the first."""
    modules: list[nn.Module] = []
    for i in range(convs):
        modules += [nn.Conv2d(inplanes if i == 0 else channels, channels, kernel_size=3, stride=stride if i == 0 else 1,
                              padding=dilation, dilation=dilation, bias=False),
                    nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*modules)


def bottleneck_layers(inplanes: int, planes: int, blocks: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """A residual stage; its first block changes the width (and stride) through a 1x1 shortcut."""
    width = planes * Bottleneck.expansion
    downsample = None
    if stride != 1 or inplanes != width:
        downsample = nn.Sequential(nn.Conv2d(inplanes, width, kernel_size=1, stride=stride, bias=False),
                                   nn.BatchNorm2d(width))
    layers = [Bottleneck(inplanes, planes, stride, dilation, downsample)]
    layers += [Bottleneck(width, planes, dilation=dilation) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class DRN(nn.Module):
    """DRN-D with Bottleneck blocks, without the ImageNet classifier: RGB [B, 3, H, W] ->
    features [B, channels[-1], ceil(H / 8), ceil(W / 8)]."""

    def __init__(self, layers: tuple[int, ...] = LAYERS, channels: tuple[int, ...] = CHANNELS):
        super().__init__()
        self.out_dim = channels[-1]
        self.layer0 = nn.Sequential(nn.Conv2d(3, channels[0], kernel_size=7, padding=3, bias=False),
                                    nn.BatchNorm2d(channels[0]), nn.ReLU(inplace=True))
        self.layer1 = conv_layers(channels[0], channels[0], layers[0])
        self.layer2 = conv_layers(channels[0], channels[1], layers[1], stride=2)
        expanded = [c * Bottleneck.expansion for c in channels]
        self.layer3 = bottleneck_layers(channels[1], channels[2], layers[2], stride=2)
        self.layer4 = bottleneck_layers(expanded[2], channels[3], layers[3], stride=2)
        self.layer5 = bottleneck_layers(expanded[3], channels[4], layers[4], dilation=2)
        self.layer6 = bottleneck_layers(expanded[4], channels[5], layers[5], dilation=4)
        self.layer7 = conv_layers(expanded[5], channels[6], layers[6], dilation=2)
        self.layer8 = conv_layers(channels[6], channels[7], layers[7])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.layer0(x)))
        x = self.layer6(self.layer5(self.layer4(self.layer3(x))))
        return self.layer8(self.layer7(x))


def bilinear_kernel(size: int) -> torch.Tensor:
    """segment.py's fill_up_weights: w[i, j] = (1 - |i / f - c|) * (1 - |j / f - c|),
    f = ceil(size / 2), c = (2f - 1 - f % 2) / (2f)."""
    f = math.ceil(size / 2)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    line = 1 - (torch.arange(size, dtype=torch.float64) / f - c).abs()
    return torch.outer(line, line).float()


class DRNSeg(nn.Module):
    """segment.py's DRNSeg around DRN-D-105: RGB, normalised -> log-probabilities
    [B, classes, 8 * ceil(H / 8), 8 * ceil(W / 8)]."""

    def __init__(self, classes: int = NUM_CLASSES):
        super().__init__()
        drn = DRN()
        self.base = nn.Sequential(*drn.children())
        self.seg = nn.Conv2d(drn.out_dim, classes, kernel_size=1, bias=True)
        self.up = nn.ConvTranspose2d(classes, classes, UP_KERNEL, stride=UP_STRIDE, padding=UP_PADDING,
                                     output_padding=0, groups=classes, bias=False)
        with torch.no_grad():
            self.up.weight.copy_(bilinear_kernel(UP_KERNEL).expand_as(self.up.weight))
        self.up.weight.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.up(self.seg(self.base(x))), dim=1)


class DRNSegmenter(nn.Module):
    """The segmenter contract around DRNSeg: RGB float [B, 3, H, W] in 0..1 -> log-probabilities
    [B, 19, H, W] of the Cityscapes train ids.

    Log-probabilities, not logits: they are DRNSeg's own output, so scores compare directly with
    the authors' code; the argmax the evaluation takes is the same either way.
    """

    def __init__(self, drn: DRNSeg):
        super().__init__()
        self.drn = drn
        self.register_buffer("mean", torch.tensor(CITYSCAPES_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(CITYSCAPES_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]
        scores = self.drn((x - self.mean) / self.std)
        return scores[:, :, :height, :width]


# ---------------------------------------------------------------- the published file


def is_drn_d_105_state_dict(obj: object) -> bool:
    """True for a mapping with DRNSeg-around-DRN-D-105 keys (base.0 stem, seg, up, 23 blocks in base.5)."""
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        return False
    if not {"base.0.0.weight", "seg.weight", "up.weight"} <= obj.keys():
        return False
    blocks = {k.split(".")[2] for k in obj if k.startswith("base.5.") and k.endswith(".conv1.weight")}
    return len(blocks) == LAYERS[4]


def read_torch_file(data: bytes, where: str) -> object:
    """torch.load of a file's bytes (tensors only, never code), as a one-line UserError when it is no PyTorch file."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load reports a damaged file as any of several types
        text = str(exc)
        if isinstance(exc, pickle.UnpicklingError) and (found := re.search(r"Unsupported global: GLOBAL (\S+)", text)):
            raise UserError(f"{where}: not a plain state dict (it pickles {found[1]}; save a state_dict())") from None
        # torch's weights-only refusals say what they met after their advice, on a later line
        reason = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        detail = reason[1].strip() if reason else type(exc).__name__ + (f": {first_line(exc)}" if text.strip() else "")
        raise UserError(f"{where}: not a PyTorch file (truncated?): {detail}") from None


def drn_d_105_from_state_dict(state: object, where: str) -> DRNSeg:
    """A DRNSeg holding `state`, after strict key and shape checks (one-line UserErrors)."""
    check_state_dict(state, where)
    model = DRNSeg()
    full = dict(state)  # type: ignore[arg-type]
    for key in model.state_dict():
        if key.endswith(NUM_BATCHES_TRACKED) and key not in full:
            full[key] = torch.zeros((), dtype=torch.long)
    model.load_state_dict(full, strict=True)
    return model.eval()


def check_state_dict(state: object, where: str) -> None:
    """The published file's key set and shapes, exactly; num_batches_tracked may be absent."""
    if not isinstance(state, Mapping):
        raise UserError(f"{where}: not a state dict (a {type(state).__name__})")
    if "state_dict" in state:
        raise UserError(f"{where}: a training checkpoint ('state_dict' inside), not the published plain state dict")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise UserError(f"{where}: not a state dict (not every entry is a tensor under a name)")
    with torch.device("meta"):  # shapes only: no memory, no init time
        reference = DRNSeg().state_dict()
    expected = {k: tuple(v.shape) for k, v in reference.items() if not k.endswith(NUM_BATCHES_TRACKED)}
    given = {k: tuple(v.shape) for k, v in state.items() if not (k.endswith(NUM_BATCHES_TRACKED) and k in reference)}
    problems = []
    if missing := [k for k in expected if k not in given]:
        problems.append(_counted(missing, "key missing", "keys missing"))
    if unexpected := [k for k in given if k not in expected]:
        problems.append(_counted(unexpected, "unexpected key", "unexpected keys"))
    if wrong := [f"{k} {list(given[k])}, expected {list(expected[k])}" for k in expected
                 if k in given and given[k] != expected[k]]:
        problems.append(_counted(wrong, "shape mismatch", "shape mismatches"))
    if problems:
        hint = " (keys start with 'module.': a DataParallel state dict)" if all(
            k.startswith("module.") for k in state) else ""
        raise UserError(f"{where}: " + "; ".join(problems) + hint)


def _counted(items: list[str], one: str, many: str, shown: int = 3) -> str:
    listed = ", ".join(items[:shown]) + (", ..." if len(items) > shown else "")
    return f"{len(items)} {one if len(items) == 1 else many} ({listed})"


def load_drn_d_105(path: str | Path) -> DRNSeg:
    """The published file (or one with its layout) as a DRNSeg in eval mode; one-line UserErrors."""
    path = Path(path).expanduser()
    where = f"{DRN_D_105} {path}"
    if not path.is_file():
        raise UserError(f"{where}: no such file; it is {WHERE_TO_GET}")
    return drn_d_105_from_state_dict(read_torch_file(path.read_bytes(), where), where)


def default_drn_d_105_path() -> Path:
    """Where `--segmenter drn-d-105` looks: torch hub's checkpoints folder, like the FID weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / PUBLISHED_FILE


def absolute_segmenter_uri(uri: str) -> str:
    """What `--segmenter` names, as Ray workers in other folders can use it: `drn-d-105` as
    given, `drn-d-105:PATH` and plain paths made absolute, URIs unchanged (pipeline.fs.absolute)."""
    if uri == DRN_D_105:
        return uri
    if uri.startswith(DRN_D_105 + ":"):
        return f"{DRN_D_105}:{absolute(uri[len(DRN_D_105) + 1:])}"
    return absolute(uri)


def drn_d_105_path(uri: str) -> Path:
    """The local file `drn-d-105` or `drn-d-105:PATH` names; a one-line UserError saying where to get it."""
    given = uri[len(DRN_D_105) + 1:] if uri.startswith(DRN_D_105 + ":") else ""
    path = Path(given).expanduser() if given else default_drn_d_105_path()
    if not path.is_file():
        where = f"no file {path}" if given else f"no {path} (torch hub's checkpoints folder)"
        raise UserError(f"segmenter {uri}: {where}; it is {WHERE_TO_GET}")
    return path
