"""Image-quality metrics for generation and restoration: bits/dim of a lossless codec, PSNR and SSIM
(through MONAI), sharpness (accutance), and data consistency of a restoration with its degraded input.

All tensor metrics take torch tensors ``(B, C, *spatial)`` (2D or 3D) and return one value per example,
a tensor of shape ``(B,)``; average it yourself (PSNR of a perfect match is ``inf``).
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import torch

__all__ = [
    "data_consistency",
    "masked_psnr",
    "png_bits_per_dim",
    "psnr",
    "relative_sharpness",
    "sharpness",
    "ssim",
]


def png_bits_per_dim(images01) -> float:
    """Mean size of lossless 8-bit PNGs of ``round(255 x)`` (maximum compression) in bits per pixel.

    Args:
        images01: iterable of 2D images (any leading singleton dims) with intensities in [0, 1].
    """
    from PIL import Image

    total, count = 0.0, 0
    for img in images01:
        k = np.round(np.clip(np.asarray(img).squeeze(), 0, 1) * 255).astype(np.uint8)
        if k.ndim != 2:
            raise ValueError(f"png_bits_per_dim expects 2D images, got shape {np.asarray(img).shape}.")
        buf = io.BytesIO()
        Image.fromarray(k).save(buf, format="PNG", optimize=True)
        total += 8.0 * len(buf.getvalue()) / k.size
        count += 1
    if count == 0:
        raise ValueError("images01 is empty.")
    return total / count


# ---------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------
def _batch(x, name: str) -> torch.Tensor:
    """``x`` as a float tensor (B, C, *spatial) with 2 or 3 spatial dims."""
    x = torch.as_tensor(x)
    if x.ndim not in (4, 5):
        raise ValueError(f"{name} must have shape (B, C, H, W) or (B, C, H, W, D), got {tuple(x.shape)}.")
    return x if x.is_floating_point() else x.float()


def _pair(x, y, x_name: str, y_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _batch(x, x_name), _batch(y, y_name)
    if x.shape != y.shape:
        raise ValueError(f"{x_name} and {y_name} must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}.")
    return x, y.to(device=x.device, dtype=x.dtype)


def _check_range(data_range: float) -> float:
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range!r}.")
    return float(data_range)


# ---------------------------------------------------------------------------------------------
# fidelity
# ---------------------------------------------------------------------------------------------
def psnr(x, y, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio ``10 log10(data_range^2 / MSE)`` per example (MONAI ``PSNRMetric``).

    Args:
        x: (B, C, *spatial) image, e.g. the restoration.
        y: (B, C, *spatial) reference image.
        data_range: peak-to-peak range of the data (1 for images in [0, 1], 2 for [-1, 1]).

    Returns:
        (B,) PSNR in dB; ``inf`` where ``x`` equals ``y``.
    """
    from monai.metrics import PSNRMetric

    x, y = _pair(x, y, "x", "y")
    return PSNRMetric(max_val=_check_range(data_range), reduction="none")(x, y).reshape(-1)


def masked_psnr(x, y, mask, data_range: float = 1.0) -> torch.Tensor:
    """PSNR per example over the voxels where ``mask`` is non-zero only (e.g. inside an inpainted hole).

    Args:
        x: (B, C, *spatial) image.
        y: (B, C, *spatial) reference image.
        mask: (B or 1, 1 or C, *spatial); non-zero marks the voxels to compare (all channels of a voxel when
            it has one channel).
        data_range: peak-to-peak range of the data.

    Returns:
        (B,) PSNR in dB over the masked voxels; ``inf`` where they agree exactly.

    Raises:
        ValueError: on shapes that do not match, or an example whose mask selects no voxel.
    """
    x, y = _pair(x, y, "x", "y")
    m = _batch(mask, "mask")
    if m.shape[2:] != x.shape[2:] or m.shape[0] not in (1, x.shape[0]) or m.shape[1] not in (1, x.shape[1]):
        raise ValueError(
            f"mask must have shape ({x.shape[0]} or 1, 1 or {x.shape[1]}, *{tuple(x.shape[2:])}), got {tuple(m.shape)}."
        )
    m = (m != 0).to(x.device).expand_as(x).reshape(x.shape[0], -1)
    count = m.sum(1)
    if bool((count == 0).any()):
        raise ValueError(f"mask selects no voxel in examples {torch.nonzero(count == 0).reshape(-1).tolist()}.")
    sq = ((x - y).reshape(x.shape[0], -1) ** 2 * m).sum(1)
    return 10 * torch.log10(_check_range(data_range) ** 2 / (sq / count))


def ssim(x, y, data_range: float = 1.0, win_size: int = 11) -> torch.Tensor:
    """Structural similarity per example with a Gaussian window (MONAI ``SSIMMetric``, sigma 1.5), averaged
    over channels and the valid window positions.

    Args:
        x: (B, C, *spatial) image, 2D or 3D, every spatial side at least ``win_size``.
        y: (B, C, *spatial) reference image.
        data_range: peak-to-peak range of the data.
        win_size: side of the Gaussian window.

    Returns:
        (B,) SSIM, 1 for identical images.
    """
    from monai.metrics import SSIMMetric

    x, y = _pair(x, y, "x", "y")
    if min(x.shape[2:]) < win_size:
        raise ValueError(f"x must be at least win_size={win_size} along every spatial axis, got {tuple(x.shape)}.")
    metric = SSIMMetric(
        spatial_dims=x.ndim - 2, data_range=_check_range(data_range), win_size=win_size, reduction="none"
    )
    return metric(x, y).reshape(-1)


# ---------------------------------------------------------------------------------------------
# sharpness
# ---------------------------------------------------------------------------------------------
def sharpness(x) -> torch.Tensor:
    """Accutance: root-mean-square gradient magnitude per example, ``sqrt(mean |grad x|^2)``, with MONAI's
    normalised Sobel filter (``SobelGradients``, reflect padding; a unit-slope ramp has gradient 1 per voxel).

    The mean of squares, not of magnitudes: the plain mean ``|grad x|`` is the total variation per voxel,
    which blurring a monotone edge does not change, while the energy of the gradient falls as an edge
    spreads.  Noise raises it too, so compare restorations of the same image only, best through
    :func:`relative_sharpness`.

    Args:
        x: (B, C, *spatial) images, 2D or 3D, every spatial side at least 2.

    Returns:
        (B,) RMS over channels and voxels of ``|grad x|`` (intensity units per voxel).
    """
    from monai.transforms import SobelGradients
    from monai.utils import convert_to_tensor

    x = _batch(x, "x")
    if min(x.shape[2:]) < 2:
        raise ValueError(f"x must have at least 2 voxels along every spatial axis, got {tuple(x.shape)}.")
    batch, channels, spatial = x.shape[0], x.shape[1], x.shape[2:]
    # SobelGradients takes (N, *spatial) and returns the N images' gradients axis after axis: (ndim * N, *spatial)
    grads = SobelGradients(dtype=x.dtype)(x.reshape(batch * channels, *spatial))
    grads = convert_to_tensor(grads, track_meta=False).reshape(len(spatial), batch, channels, *spatial)
    return grads.pow(2).sum(0).reshape(batch, -1).mean(1).sqrt()


def relative_sharpness(x, truth) -> torch.Tensor:
    """``sharpness(x) / sharpness(truth)`` per example: 1 is as sharp as the truth, below 1 blurrier.

    Args:
        x: (B, C, *spatial) restoration.
        truth: (B, C, *spatial) ground truth, not constant.

    Returns:
        (B,) ratio.
    """
    x, truth = _pair(x, truth, "x", "truth")
    reference = sharpness(truth)
    if bool((reference == 0).any()):
        raise ValueError("truth has zero sharpness (a constant image) in some examples; the ratio is undefined.")
    return sharpness(x) / reference


# ---------------------------------------------------------------------------------------------
# data consistency
# ---------------------------------------------------------------------------------------------
def data_consistency(
    output,
    degraded_input,
    degrade_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    mask=None,
    data_range: float = 1.0,
) -> torch.Tensor:
    """How well a restoration explains its input: PSNR between the re-degraded output and the degraded input.

    ``psnr(degrade_fn(output), degraded_input)`` per example.  A restoration that agrees with the measurement
    (e.g. a super-resolved image whose downsampled version is the low-resolution input) scores high, ``inf``
    when exact; one that invents a different image scores low however plausible it looks.

    Args:
        output: (B, C, *spatial) restoration.
        degraded_input: (B, C', *spatial') the measurement it was restored from; the shape of
            ``degrade_fn(output)`` (e.g. the low-resolution grid for super-resolution).
        degrade_fn: the forward model, (B, C, *spatial) -> the shape of ``degraded_input``, applied with the
            same parameters (factor, noise seed) that made the input; None: identity.
        mask: inpainting variant, (B or 1, 1 or C, *spatial) with 1 = missing: only the known voxels
            (``mask == 0``) are compared, so the error is that on the known region.
        data_range: peak-to-peak range of the data.

    Returns:
        (B,) PSNR in dB.

    Raises:
        ValueError: when ``degrade_fn(output)`` does not have the shape of ``degraded_input``, or ``mask``
            does not fit, or leaves no known voxel.
    """
    output = _batch(output, "output")
    redegraded = output if degrade_fn is None else torch.as_tensor(degrade_fn(output))
    degraded_input = _batch(degraded_input, "degraded_input")
    if redegraded.shape != degraded_input.shape:
        raise ValueError(
            f"degraded_input must have the shape of degrade_fn(output), {tuple(redegraded.shape)}, "
            f"got {tuple(degraded_input.shape)}."
        )
    if mask is None:
        return psnr(redegraded, degraded_input, data_range)
    known = 1 - (_batch(mask, "mask") != 0).float()
    return masked_psnr(redegraded, degraded_input, known, data_range)
