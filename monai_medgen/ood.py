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

**The layout score** (the default of ``monai-medgen score`` for a bundle that ships a layout model, e.g.
``vdm_brain_mri_2d``'s ``models/layout_model.pt`` from ``configs/train_layout.yaml``).  The main 2D VDM trains on
64 x 64 crops, so it judges local texture: another species' brain, a brain under a smooth bias field, or one turned
a quarter or front to back keeps that texture and scores as typical.  The layout model is the same VDM trained on
*whole* slices at 32 x 32, so it has learned where things sit.  Its score generalises the complexity correction
from one alternative explanation of the image to several::

    layout score = layout bits/dim - min(codec bits/dim,  layout bits/dim of the slice turned 90 degrees either way
                                         or front to back)

(all at 32 x 32, the turned copies scored with the same diffusion times and turned noise, so that only the model's
preference for an orientation remains).  An in-distribution slice is coded better by the model than by the codec and
better the right way round than turned: clearly negative.  A photograph is coded no better than by the codec; a
turned brain, or one whose layout the model finds more plausible turned, better turned: positive or near zero.
See ``docs/benchmarks/ood_score.md`` for every score's AUROC on the panel.

Inputs are first checked (:func:`check_scorable`): an image too small in-plane, holding NaN/inf, or constant (or
near-constant after 8-bit scaling) carries no anatomy to score and is refused with a ``ValueError`` that names it.

Typical use::

    slices = prepare_slices(volume, size=128, num_slices=16, name="scan.nii.gz")   # (N, 1, 128, 128) in [0, 1]
    result = score_slices(slices, network, inferer)                                # texture score, per slice
    flagged = result["score"].mean() > DEFAULT_THRESHOLDS["png"]
    layout = load_layout_model(bundle)                                             # bundle = load_bundle(...)
    result = score_slices(slices, network, inferer, layout=layout)                 # score = layout score
    flagged = result["score"].mean() > LAYOUT_THRESHOLDS["png"]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from monai_medgen.data import resize_volume, scale_intensity, volume_slices
from monai_medgen.inferers.vdm import to_levels
from monai_medgen.metrics import lossless_bits

__all__ = [
    "CODECS",
    "DEFAULT_CODEC",
    "DEFAULT_THRESHOLDS",
    "LAYOUT_THRESHOLDS",
    "LayoutModel",
    "MIN_INPLANE",
    "MIN_LEVEL_STD",
    "THRESHOLD_PERCENTILE",
    "check_scorable",
    "codec_bits_per_dim",
    "eight_bit",
    "layout_scores",
    "layout_slices",
    "load_layout_model",
    "model_bits_per_dim",
    "prepare_slices",
    "score_slices",
    "turned_bits_per_dim",
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
# scores of training data of bundles/vdm_brain_mri_2d (its 121 MNI152 2009a axial slices), never of evaluation
# images; recalibrate for other weights with `python scripts/evaluate_ood.py --calibrate`
THRESHOLD_PERCENTILE = 99.0
DEFAULT_THRESHOLDS = {"png": -0.495, "jpegxl": -0.195}
# the same percentile of the layout score (:func:`layout_scores`) of those training slices, per codec
LAYOUT_THRESHOLDS = {"png": -0.320, "jpegxl": -0.189}
# the alternatives of the layout score: the slice turned a quarter either way and front to back (the slices are
# RAS-ordered, axis -2 left-right and axis -1 posterior-anterior; a left-right mirror is no alternative: brains are
# nearly symmetric and the models train with that flip)
TURNS = ("quarter turn left", "quarter turn right", "front to back")


@dataclass
class LayoutModel:
    """A VDM trained on whole slices at ``size`` x ``size`` (a bundle's ``layout_network`` / ``layout_inferer``)."""

    network: torch.nn.Module
    inferer: object
    size: int = 32


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
    layout: LayoutModel | None = None,
) -> dict[str, np.ndarray]:
    """Per-slice scores of (N, 1, H, W) slices in [0, 1] (from :func:`prepare_slices`).

    Returns ``{"bpd": model bits/dim, "codec_bpd": codec bits/dim, "texture_score": bpd - codec_bpd, "score"}``,
    each (N,); with a ``layout`` model also the entries of :func:`layout_scores`, and ``score`` (lower = more
    typical) is then the layout score, else the texture score (the complexity-corrected bits/dim).
    """
    bpd = model_bits_per_dim(slices01, network, inferer, num_time_samples, seed, batch_size, device)
    ref = codec_bits_per_dim(slices01, codec)
    out = {"bpd": bpd, "codec_bpd": ref, "texture_score": bpd - ref}
    if layout is not None:
        out.update(layout_scores(slices01, layout, codec, num_time_samples, seed, device=device))
    out["score"] = out["layout_score"] if layout is not None else out["texture_score"]
    return out


# ---------------------------------------------------------------------------------------------
# the layout score
# ---------------------------------------------------------------------------------------------
def _turn(x: torch.Tensor, which: int) -> torch.Tensor:
    """``x`` (N, C, H, W) as it is (0) or turned as ``TURNS[which - 1]``."""
    if which == 0:
        return x
    if which in (1, 2):
        return torch.rot90(x, 1 if which == 1 else -1, (-2, -1))
    return torch.flip(x, (-1,))


@torch.no_grad()
def turned_bits_per_dim(
    slices01,
    network: Callable,
    inferer,
    num_time_samples: int = 16,
    seed: int = 0,
    batch_size: int = 16,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """(N, 1 + len(TURNS)) bits/dim of each slice as it is and turned (:data:`TURNS`), with common random numbers:
    the same stratified diffusion times for all four, the noise turned with the slice and the same decoder noise,
    so that differences between the columns come from the model's preference for an orientation, not from noise.

    Args:
        slices01: (N, 1, H, W) intensities in [0, 1] (square: a quarter turn keeps the shape).
    """
    x = torch.as_tensor(np.asarray(slices01, dtype=np.float32)) * 2 - 1
    if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"slices01 must be (N, C, H, W) square slices, got shape {tuple(x.shape)}.")
    device = torch.device(device) if device is not None else next(iter(network.parameters())).device
    bits = torch.zeros(x.shape[0], 1 + len(TURNS), dtype=torch.float64)
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size].to(device)
        g = torch.Generator(device=device).manual_seed(int(seed) + start)
        u0 = torch.rand(xb.shape[0], generator=g, device=device)
        for i in range(num_time_samples):
            times = torch.remainder(u0 + i / num_time_samples, 1.0)
            eps = torch.randn(xb.shape, generator=g, device=device)
            for j in range(1 + len(TURNS)):
                g0 = torch.Generator(device=device).manual_seed(int(seed) + 7919 * (i + 1))  # same decoder noise
                out = inferer(_turn(xb, j), network, times=times, noise=_turn(eps, j), generator=g0)
                bits[start : start + xb.shape[0], j] += out.bpd.double().cpu() / num_time_samples
    return bits.numpy()


def layout_slices(slices01, size: int) -> np.ndarray:
    """(N, 1, H, W) slices in [0, 1] area-resized to (N, 1, size, size): what the layout model reads."""
    small = np.stack([resize_volume(np.asarray(a, np.float32), (size, size)) for a in slices01])
    return np.clip(small.astype(np.float32), 0.0, 1.0)


def layout_scores(
    slices01,
    layout: LayoutModel,
    codec: str = DEFAULT_CODEC,
    num_time_samples: int = 16,
    seed: int = 0,
    batch_size: int = 64,
    device: torch.device | str | None = None,
) -> dict[str, np.ndarray]:
    """The layout score of (N, 1, H, W) slices in [0, 1] (from :func:`prepare_slices`), each area-resized to the
    layout model's size.

    Returns (each (N,)): ``layout_bpd`` (the layout model's bits/dim), ``layout_codec_bpd`` (``codec`` on the same
    8-bit small slice), ``layout_turned_bpd`` (the fewest bits/dim of the turned copies), and ``layout_score`` =
    ``layout_bpd - min(layout_codec_bpd, layout_turned_bpd)`` (lower = more typical).
    """
    small = layout_slices(slices01, layout.size)
    bits = turned_bits_per_dim(small, layout.network, layout.inferer, num_time_samples, seed, batch_size, device)
    ref = codec_bits_per_dim(small, codec)
    turned = bits[:, 1:].min(1)
    return {
        "layout_bpd": bits[:, 0],
        "layout_codec_bpd": ref,
        "layout_turned_bpd": turned,
        "layout_score": bits[:, 0] - np.minimum(ref, turned),
    }


def load_layout_model(bundle, prefix: str = "layout") -> LayoutModel | None:
    """The layout model of an opened bundle (:class:`monai_medgen.pipelines.Bundle`): its inference config's
    ``layout_network``, ``layout_inferer`` (and ``layout_schedule``) with the weights of ``layout_model_path``; None
    when the bundle defines none or its weights file is absent (then only the texture score is available).
    ``prefix`` reads another whole-slice model of the same form (``"coarse"``: the first stage of the cascaded
    sampler, ``coarse_network`` ... ``coarse_model_path``).

    Raises:
        ValueError: when the weights exist but do not fit the network, or are corrupted (named).
    """
    from monai_medgen.bundle.workflow import load_model

    if f"{prefix}_network" not in bundle.parser or f"{prefix}_model_path" not in bundle.parser:
        return None
    path = Path(bundle.get(f"{prefix}_model_path"))
    if not path.is_file():
        return None
    network = bundle.get(f"{prefix}_network")
    schedule = bundle.get(f"{prefix}_schedule") if f"{prefix}_schedule" in bundle.parser else None
    try:
        load_model(path, network, schedule, map_location=bundle.device)
    except RuntimeError as e:  # state_dict mismatch
        raise ValueError(f"{path}: the {prefix} weights do not fit {prefix}_network: {e}") from e
    network.eval()
    return LayoutModel(network, bundle.get(f"{prefix}_inferer"), int(bundle.get(f"{prefix}_size", 32)))
