"""The "vivid" tone mapping the authors applied to the targets of their 512p and 1024p models.

    vivid(photo uint8 [H, W, 3]) -> uint8 [H, W, 3]         # --photo-tone vivid, per resolution

The authors' optional_preprocessing/generate_vivid_images_{512,1024}full.m (after Farbman et
al., "Edge-Preserving Decompositions for Multi-Scale Tone and Detail Manipulation", 2008),
run on each photograph already resized to the training resolution:
1. gamma 0.75 on RGB in [0, 1], then sRGB -> CIELAB;
2. two edge-preserving smoothings of L by weighted least squares (wlsFilter.m): L0 with
   lambda 0.125 and L1 with lambda 0.5, both alpha 1.2, affinities from log(L);
3. three tonemapLAB passes (fine, medium, coarse; `PASSES`), each of which recombines the
   detail bands L - L0 and L0 - L1 and the base L1 through rescaled sigmoids, scales a and
   b by 1.1 and converts back to sRGB (clipped to [0, 1]);
4. the mean of the three, written as 8-bit (rounded).

The colour conversion is scikit-image's; the linear system is solved with SciPy's sparse LU.
MATLAB's makecform('srgb2lab') goes through the sRGB ICC profile to Lab relative to D50, the
ICC's white, where skimage's rgb2lab is relative to D65; we adapt skimage's D65 XYZ to D50
with the Bradford transform (and back), so L and the saturation scaling act in the same
space as the authors'. Two small differences remain: the authors resized in floating point
and tone-mapped that, we tone-map the stored 8-bit photo; and ICC's D50 white
(0.9642, 1, 0.8249) differs from skimage's in the fourth decimal.

Cost: two sparse solves of H*W unknowns dominate (docs/recipe.md#vivid-targets, for the time per
512x1024 image).
"""
from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
from skimage import color

GAMMA = 0.75
SMOOTHINGS = (0.125, 0.5)  # lambda of L0 and L1
WLS_ALPHA = 1.2
WLS_SMALL = 1e-4  # wlsFilter.m's smallNum: keeps affinities finite where L is flat
# tonemapLAB's parameters per pass (val0: L - L0, val1: L0 - L1, val2: the base L1), gamma 1.
PASSES = (
    {"val0": 25, "val1": 1, "val2": 1, "exposure": 1.0},  # fine
    {"val0": 1, "val1": 40, "val2": 1, "exposure": 1.0},  # medium
    {"val0": 4, "val1": 1, "val2": 15, "exposure": 1.10},  # coarse
)
SATURATION = 1.1
BASE_PIVOT = 56.0  # tonemapLAB compresses the base around L = 56

# Bradford cone response; the adaptation D65 -> D50 between skimage's two white points.
_BRADFORD = np.array([[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]])


def _white(name: str) -> np.ndarray:
    return np.array(color.xyz_tristimulus_values(illuminant=name, observer="2"))


_D65_TO_D50 = np.linalg.inv(_BRADFORD) @ np.diag((_BRADFORD @ _white("d50")) / (_BRADFORD @ _white("d65"))) @ _BRADFORD
_D50_TO_D65 = np.linalg.inv(_D65_TO_D50)


def vivid(photo: np.ndarray) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> the authors' vivid version of it, uint8 [H, W, 3]."""
    return np.round(vivid_rgb(photo) * 255.0).astype(np.uint8)  # MATLAB's imwrite of a double image


def vivid_rgb(photo: np.ndarray) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> the vivid image before 8-bit rounding, float64 in [0, 1]."""
    rgb = (photo.astype(np.float64) / 255.0) ** GAMMA
    lab = srgb_to_lab(rgb)
    lightness = lab[..., 0]
    fine_base, coarse_base = (wls_filter(lightness, smoothing) for smoothing in SMOOTHINGS)
    passes = [tonemap_lab(lab, fine_base, coarse_base, **p) for p in PASSES]
    return sum(passes) / len(passes)


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] -> CIELAB relative to D50 (as makecform('srgb2lab'))."""
    return color.xyz2lab(color.rgb2xyz(rgb) @ _D65_TO_D50.T, illuminant="D50")


def lab_to_srgb(lab: np.ndarray) -> np.ndarray:
    """CIELAB relative to D50 -> sRGB clipped to [0, 1] (as makecform('lab2srgb'))."""
    with warnings.catch_warnings():  # skimage warns about (and clips) Z < 0 out of gamut
        warnings.simplefilter("ignore", UserWarning)
        xyz = color.lab2xyz(lab, illuminant="D50")
    return np.clip(color.xyz2rgb(xyz @ _D50_TO_D65.T), 0.0, 1.0)


def wls_filter(image: np.ndarray, smoothing: float, alpha: float = WLS_ALPHA) -> np.ndarray:
    """wlsFilter.m: argmin_u |u - image|^2 + smoothing * sum a_pq (u_p - u_q)^2 over 4-neighbours,
    with a_pq = 1 / (|log image_p - log image_q|^alpha + 1e-4); i.e. solve (I + G) u = image,
    G the weighted graph Laplacian. Pixels are numbered row by row (MATLAB numbers them column
    by column: the same system, its unknowns permuted)."""
    height, width = image.shape
    log_image = np.log(image + np.finfo(np.float64).eps)
    vertical = np.zeros((height, width))  # pixel (i, j) with (i + 1, j), 0 in the last row
    vertical[:-1] = -smoothing / (np.abs(np.diff(log_image, axis=0)) ** alpha + WLS_SMALL)
    horizontal = np.zeros((height, width))  # pixel (i, j) with (i, j + 1), 0 in the last column
    horizontal[:, :-1] = -smoothing / (np.abs(np.diff(log_image, axis=1)) ** alpha + WLS_SMALL)
    vertical, horizontal = vertical.ravel(), horizontal.ravel()
    n = height * width
    off_diagonal = scipy.sparse.diags([horizontal[:-1], vertical[:-width]], [-1, -width], shape=(n, n))
    # Each pixel's own entry: 1 minus the (negative) weights to its four neighbours.
    neighbours = horizontal + vertical
    neighbours[1:] += horizontal[:-1]
    neighbours[width:] += vertical[:-width]
    system = (off_diagonal + off_diagonal.T + scipy.sparse.diags(1.0 - neighbours)).tocsc()
    # The system is symmetric: minimum degree on its pattern (A^T + A) fills in least.
    solution = scipy.sparse.linalg.spsolve(system, image.ravel(), permc_spec="MMD_AT_PLUS_A")
    return solution.reshape(height, width)


def sigmoid(x: np.ndarray, steepness: float) -> np.ndarray:
    """sigmoid.m: a logistic curve through 0, rescaled so that 0.5 maps to 0.5."""
    half = 1.0 / (1.0 + np.exp(-steepness * 0.5)) - 0.5
    return (1.0 / (1.0 + np.exp(-steepness * x)) - 0.5) * (0.5 / half)


def _compress(band: np.ndarray, amount: float) -> np.ndarray:
    """tonemapLAB's treatment of one band on the L scale: sigmoid for amount > 0, else linear."""
    if amount > 0:
        return sigmoid(band / 100.0, amount) * 100.0
    return (1.0 + amount) * band


def tonemap_lab(lab: np.ndarray, fine_base: np.ndarray, coarse_base: np.ndarray, *,
                val0: float, val1: float, val2: float, exposure: float) -> np.ndarray:
    """tonemapLAB.m with gamma 1 and saturation SATURATION -> sRGB in [0, 1]."""
    lightness = lab[..., 0]
    fine_detail = _compress(lightness - fine_base, val0)
    coarse_detail = _compress(fine_base - coarse_base, val1)
    base = _compress(exposure * coarse_base - BASE_PIVOT, val2) + BASE_PIVOT
    mapped = np.empty_like(lab)
    mapped[..., 0] = base + coarse_detail + fine_detail
    mapped[..., 1:] = lab[..., 1:] * SATURATION
    return lab_to_srgb(mapped)
