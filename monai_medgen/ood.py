"""Out-of-distribution scores for 2D slices under a trained VDM, corrected for input complexity.

Raw likelihood is a poor out-of-distribution score: a constant image, a smooth phantom or a head CT needs fewer
bits/dim than a real T1 brain slice, so they look "typical" (Nalisnick et al. 2019).  Most of a likelihood measures
how compressible an image is, not whether it resembles the training data.  The complexity-corrected score of
Serra et al. (ICLR 2020) removes that part by subtracting the bits/dim of a generic lossless codec on the *same*
8-bit image::

    score = model bits/dim - codec bits/dim          (lower = more typical of the training data)

The idea: the model should compress an in-distribution slice much better than a generic codec does (a clearly
negative score), and an image unlike its training data no better, or worse (a score near or above 0), however simple
or complex that image is.  How well this separates depends on what the model has learned: see
``docs/benchmarks/ood_score.md`` for the measured AUROC and the groups it misses.  PNG (Pillow, maximum compression) is the default
codec; JPEG-XL lossless (``imagecodecs``, optional) is stronger and can be chosen with ``codec="jpegxl"``.

Inputs are first checked (:func:`check_scorable`): an image too small in-plane, holding NaN/inf, or constant (or
near-constant after 8-bit scaling) carries no anatomy to score and is refused with a ``ValueError`` that names it.

Typical use::

    slices = prepare_slices(volume, size=128, num_slices=16, name="scan.nii.gz")   # (N, 1, 128, 128) in [0, 1]
    result = score_slices(slices, network, inferer)                                # per-slice dict
    flagged = result["score"].mean() > DEFAULT_THRESHOLDS["png"]
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from monai_medgen.data import resize_volume, scale_intensity, volume_slices
from monai_medgen.inferers.vdm import to_levels
from monai_medgen.metrics import lossless_bits

__all__ = [
    "CODECS",
    "DEFAULT_CODEC",
    "DEFAULT_THRESHOLDS",
    "MIN_INPLANE",
    "MIN_LEVEL_STD",
    "THRESHOLD_PERCENTILE",
    "check_scorable",
    "codec_bits_per_dim",
    "eight_bit",
    "model_bits_per_dim",
    "prepare_slices",
    "score_slices",
]

# the smallest in-plane size that holds anything to score: the model sees 128 x 128 slices, and a smaller image
# is enlarged to that size (a 4 x 4 "image" would be 16 flat blocks)
MIN_INPLANE = 16
# a slice whose 8-bit levels (0..255 after the per-volume scaling) vary by less than this standard deviation is
# near-constant: nothing but a flat field (plus rounding) to score
MIN_LEVEL_STD = 2.0
CODECS = ("png", "jpegxl")
DEFAULT_CODEC = "png"
# flag thresholds (bits/dim) on an input's mean score, per codec: the THRESHOLD_PERCENTILE-th percentile of the
# scores of the training data of bundles/vdm_brain_mri_2d (its MNI152 2009a axial slices), never of evaluation
# images; recalibrate for other weights with `python scripts/evaluate_ood.py --calibrate`
THRESHOLD_PERCENTILE = 99.0
DEFAULT_THRESHOLDS = {"png": -0.179, "jpegxl": 0.116}


# ---------------------------------------------------------------------------------------------
# input checks and preprocessing
# ---------------------------------------------------------------------------------------------
def check_scorable(image, name: str = "image", min_inplane: int = MIN_INPLANE) -> np.ndarray:
    """``image`` as a float32 array (H, W) or (H, W, D) that can be scored, or a ``ValueError`` naming ``name`` and
    what was expected: finite values, at least ``min_inplane`` pixels along both in-plane axes, some positive
    (magnitude) voxels, and not constant."""
    a = np.asarray(image, dtype=np.float32)
    shown = "x".join(map(str, a.shape))
    a = a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a  # a 2D image stored as a one-slice volume
    if a.ndim not in (2, 3):
        raise ValueError(f"{name} must be a 2D image or a 3D volume, got shape {tuple(a.shape)}.")
    if min(a.shape[:2]) < min_inplane:
        raise ValueError(
            f"{name} is too small to score: {shown} voxels; at least {min_inplane} x {min_inplane} "
            "in-plane are needed (the model scores 2D slices of anatomy)."
        )
    if not np.isfinite(a).all():
        raise ValueError(f"{name} holds NaN or infinite values; expected finite intensities.")
    if float(a.max()) == float(a.min()):
        raise ValueError(
            f"{name} is constant ({float(a.max()):g} everywhere): expected an image whose intensities "
            "vary; there is nothing to score."
        )
    if not (a > 0).any():
        raise ValueError(f"{name} has no positive voxels: expected a magnitude image (e.g. MRI).")
    return a


def _content_square(a: np.ndarray, threshold: float = 0.02) -> np.ndarray:
    """The (H, W) image cropped to the box of its pixels above ``threshold``, zero-padded (centred) to a square."""
    idx = np.nonzero(a > threshold)
    a = a[tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)]
    n = max(a.shape)
    return np.pad(a, [((n - m) // 2, n - m - (n - m) // 2) for m in a.shape])


def prepare_slices(image, size: int = 128, num_slices: int | None = 16, name: str = "image") -> np.ndarray:
    """The model's view of an image: (N, 1, size, size) float32 slices in [0, 1] with the training preprocessing.

    Negative values are clipped to 0 and the image is scaled so that the 99.5th percentile of its positive voxels
    is 1 (:func:`monai_medgen.data.scale_intensity`).  A 2D image is cropped to its content (voxels above 2% of
    that scale), padded square and resized (area) to ``size``; a volume gives ``num_slices`` evenly spaced axial
    slices through its content (:func:`monai_medgen.data.volume_slices`), the way the training slices were made.

    Raises:
        ValueError: naming ``name``, for an input :func:`check_scorable` refuses, or whose slices are
            near-constant (8-bit standard deviation below ``MIN_LEVEL_STD``).
    """

    a = check_scorable(image, name)
    a = scale_intensity(np.clip(a, 0, None))
    if a.ndim == 2:
        slices = resize_volume(_content_square(a)[None], (size, size))
        index = np.zeros(1, dtype=int)
    else:
        slices, index = volume_slices(a, size, "axial", num_slices)
    levels = np.round(slices * 255.0)
    spread = levels.reshape(levels.shape[0], -1).std(1)
    if (spread < MIN_LEVEL_STD).any():
        which = int(np.argmin(spread))
        where = "" if a.ndim == 2 else f" (axial slice {int(index[which])})"
        raise ValueError(
            f"{name} is near-constant{where}: its 8-bit levels vary with a standard deviation of "
            f"{spread[which]:.2f}; expected at least {MIN_LEVEL_STD:g} (an image, not a flat field)."
        )
    return slices[:, None].astype(np.float32)


# ---------------------------------------------------------------------------------------------
# bits/dim: a lossless codec and the model
# ---------------------------------------------------------------------------------------------
def eight_bit(slices01) -> np.ndarray:
    """The 8-bit images the model reads from (N, 1, H, W) or (N, H, W) intensities in [0, 1]: (N, H, W) uint8, the
    levels of :func:`monai_medgen.inferers.vdm.to_levels` (same float32 arithmetic), which the codec compresses."""

    x = torch.as_tensor(np.asarray(slices01, dtype=np.float32))
    return to_levels(x * 2 - 1).reshape(-1, *x.shape[-2:]).numpy().astype(np.uint8)


def codec_bits_per_dim(slices01, codec: str = DEFAULT_CODEC) -> np.ndarray:
    """Bits per pixel of each slice's 8-bit image (``round(255 x)``) compressed losslessly by ``codec``
    (``"png"``: Pillow, maximum compression; ``"jpegxl"``: imagecodecs, lossless, effort 9).

    Args:
        slices01: (N, 1, H, W) or (N, H, W) intensities in [0, 1] (array or tensor).
    Returns:
        (N,) float64.
    """
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {CODECS}, got {codec!r}.")
    return np.array([lossless_bits(k, codec) for k in eight_bit(slices01)], dtype=np.float64)


@torch.no_grad()
def model_bits_per_dim(
    slices01,
    network: Callable,
    inferer,
    num_time_samples: int = 16,
    seed: int = 0,
    batch_size: int = 16,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """The model's bits/dim (variational bound) of each slice: :meth:`VDMInferer.bits_per_dim` with
    ``num_time_samples`` stratified diffusion times, reproducible with ``seed``.

    Args:
        slices01: (N, 1, H, W) intensities in [0, 1]; a class-conditional model scores them with its null class.
    Returns:
        (N,) float64.
    """
    x = torch.as_tensor(np.asarray(slices01, dtype=np.float32)) * 2 - 1
    device = torch.device(device) if device is not None else next(iter(network.parameters())).device
    g = torch.Generator(device=device).manual_seed(int(seed))
    out = []
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size].to(device)
        bpd = inferer.bits_per_dim(xb, network, num_time_samples=num_time_samples, generator=g)
        out.append(bpd["bpd"].double().cpu())
    return torch.cat(out).numpy()


def score_slices(
    slices01,
    network: Callable,
    inferer,
    codec: str = DEFAULT_CODEC,
    num_time_samples: int = 16,
    seed: int = 0,
    batch_size: int = 16,
    device: torch.device | str | None = None,
) -> dict[str, np.ndarray]:
    """Per-slice scores of (N, 1, H, W) slices in [0, 1] (from :func:`prepare_slices`).

    Returns ``{"bpd": model bits/dim, "codec_bpd": codec bits/dim, "score": bpd - codec_bpd}``, each (N,);
    ``score`` is the complexity-corrected out-of-distribution score (lower = more typical).
    """
    bpd = model_bits_per_dim(slices01, network, inferer, num_time_samples, seed, batch_size, device)
    ref = codec_bits_per_dim(slices01, codec)
    return {"bpd": bpd, "codec_bpd": ref, "score": bpd - ref}
