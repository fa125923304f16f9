"""Image-quality metrics for generation and restoration: bits/dim of a lossless codec, PSNR and SSIM
(through MONAI), sharpness (accutance), and data consistency of a restoration with its degraded input.

All tensor metrics take torch tensors ``(B, C, *spatial)`` (2D or 3D) and return one value per example,
a tensor of shape ``(B,)``; average it yourself (PSNR of a perfect match is ``inf``).
"""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Callable

import numpy as np
import torch
from monai.metrics import PSNRMetric, SSIMMetric
from monai.transforms import SobelGradients
from monai.utils import convert_to_tensor
from PIL import Image

__all__ = [
    "LOSSLESS_CODECS",
    "available_codecs",
    "codec_bits_per_dim",
    "lossless_bits",
    "data_consistency",
    "masked_psnr",
    "png_bits_per_dim",
    "psnr",
    "relative_sharpness",
    "sharpness",
    "ssim",
]


#: lossless codecs of 8-bit images: PNG (Pillow, maximum compression) and, with the optional ``imagecodecs``,
#: JPEG-LS, JPEG 2000 (reversible 5/3 wavelet) and JPEG-XL (lossless, effort 9)
LOSSLESS_CODECS = ("png", "jpegls", "jpeg2000", "jpegxl")


def available_codecs() -> tuple[str, ...]:
    """The lossless codecs this environment can run (PNG always; the others need ``imagecodecs``)."""
    return LOSSLESS_CODECS if importlib.util.find_spec("imagecodecs") is not None else ("png",)


def _encode(k: np.ndarray, codec: str) -> bytes:
    if codec == "png":
        buf = io.BytesIO()
        Image.fromarray(k).save(buf, format="PNG", optimize=True)
        return buf.getvalue()
    try:
        import imagecodecs  # optional: pip install imagecodecs (the ood extra)
    except ImportError as e:
        raise ImportError(f"codec {codec!r} needs imagecodecs (pip install imagecodecs); 'png' needs nothing.") from e
    if codec == "jpegls":
        return imagecodecs.jpegls_encode(k)
    if codec == "jpeg2000":
        return imagecodecs.jpeg2k_encode(k, level=0, reversible=True)
    return imagecodecs.jpegxl_encode(k, lossless=True, effort=9)


def lossless_bits(image8: np.ndarray, codec: str = "png") -> float:
    """Bits per pixel of the 2D 8-bit image ``image8`` compressed losslessly by ``codec`` (:data:`LOSSLESS_CODECS`).

    Raises:
        ValueError: an unknown codec, an image that is not 2D uint8, or one the codec cannot encode (named).
        ImportError: a codec that needs ``imagecodecs`` when it is not installed.
    """
    if codec not in LOSSLESS_CODECS:
        raise ValueError(f"codec must be one of {LOSSLESS_CODECS}, got {codec!r}.")
    k = np.asarray(image8)
    if k.ndim != 2 or k.dtype != np.uint8:
        raise ValueError(f"image8 must be a 2D uint8 image, got shape {k.shape} and dtype {k.dtype}.")
    try:
        data = _encode(np.ascontiguousarray(k), codec)
    except ImportError:
        raise
    except Exception as e:  # the codec library's own error (e.g. an image it cannot encode)
        raise ValueError(f"codec {codec!r} could not encode a {k.shape[0]} x {k.shape[1]} image: {e}") from e
    return 8.0 * len(data) / k.size


def codec_bits_per_dim(images01, codec: str = "png") -> float:
    """Mean size of the lossless 8-bit images ``round(255 x)`` under ``codec`` in bits per pixel.

    Args:
        images01: iterable of 2D images (any leading singleton dims) with intensities in [0, 1].
        codec: one of :data:`LOSSLESS_CODECS`.
    """
    total, count = 0.0, 0
    for img in images01:
        k = np.round(np.clip(np.asarray(img).squeeze(), 0, 1) * 255).astype(np.uint8)
        if k.ndim != 2:
            raise ValueError(f"codec_bits_per_dim expects 2D images, got shape {np.asarray(img).shape}.")
        total += lossless_bits(k, codec)
        count += 1
    if count == 0:
        raise ValueError("images01 is empty.")
    return total / count


def png_bits_per_dim(images01) -> float:
    """Mean size of lossless 8-bit PNGs of ``round(255 x)`` (maximum compression) in bits per pixel
    (:func:`codec_bits_per_dim` with ``"png"``).

    Args:
        images01: iterable of 2D images (any leading singleton dims) with intensities in [0, 1].
    """
    return codec_bits_per_dim(images01, "png")


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
