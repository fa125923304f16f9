"""Degradations that turn a clean image into the condition of a restoration model (array transforms).

The restoration tasks of a conditional diffusion model (REFERENCE.md section 2) need a degraded copy of each
image: super-resolution by arbitrary factors (2*sqrt(2) ... 16), denoising of Gaussian or Rician noise mixed with
salt-and-pepper, inpainting of random or fixed holes, and complex MR data as real channels.
MONAI 1.6.1 stops short of these: its ``RandSimulateLowResolution`` (nnU-Net augmentation) draws a zoom from a
range and downsamples by nearest neighbour, which aliases, and has neither exact factors nor k-space truncation;
it has no salt-and-pepper noise, no inpainting masks with a controlled area, and no complex/real channel split.

All transforms take one channel-first image, ``(C, H, W)`` or ``(C, H, W, D)``, as a numpy array, a torch
tensor or a MetaTensor, and return the same type, dtype and device (MetaTensor metadata included). The
parameters of the most recent call are in ``transform.params`` (a flat dict of plain Python values, the same
keys on every call), which the dictionary twins record next to the output.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import RandomizableTransform, Transform
from monai.utils import (
    TransformBackends,
    convert_to_dst_type,
    convert_to_tensor,
    get_equivalent_dtype,
)

__all__ = [
    "SR_FACTORS",
    "JoinComplex",
    "RandInpaintingMask",
    "RandMixedNoise",
    "RandLowResolution",
    "SimulateLowResolution",
    "SplitComplex",
    "low_resolution_shape",
]

#: Super-resolution factors of the conditional DDPM study (REFERENCE.md section 2).
SR_FACTORS = (2 * math.sqrt(2), 4.0, 4 * math.sqrt(2), 8.0, 8 * math.sqrt(2), 16.0)

_BACKEND = [TransformBackends.TORCH, TransformBackends.NUMPY]
_MAX_SEED = 2**31 - 1
# interpolation used to go back onto the original grid, per upsample_mode: (2D, 3D)
_UPSAMPLE = {
    "auto": ("bicubic", "trilinear"),
    "linear": ("bilinear", "trilinear"),
    "bicubic": ("bicubic", None),
    "nearest": ("nearest-exact", "nearest-exact"),
}


def _spatial_shape(img: Any) -> tuple[int, ...]:
    if img.ndim not in (3, 4):
        raise ValueError(f"img must be channel-first (C, H, W) or (C, H, W, D), got shape {tuple(img.shape)}.")
    return tuple(int(n) for n in img.shape[1:])


def _to_work(img: NdarrayOrTensor) -> torch.Tensor:
    """Plain tensor of ``img`` in float32/float64/complex (may share memory: never modify it in place)."""
    x = convert_to_tensor(img, track_meta=False)
    return x if x.dtype in (torch.float32, torch.float64, torch.complex64, torch.complex128) else x.float()


def _like(out: torch.Tensor, img: NdarrayOrTensor, dtype: Any = None) -> NdarrayOrTensor:
    """``out`` converted to the type, device and dtype (or ``dtype``) of ``img``, with its MetaTensor metadata."""
    target = get_equivalent_dtype(img.dtype if dtype is None else dtype, torch.Tensor)
    if not (target.is_floating_point or target.is_complex or target == torch.bool):
        info = torch.iinfo(target)
        out = out.round().clamp(info.min, info.max)
    return convert_to_dst_type(out, img, dtype=target)[0]


def _as_range(value: Any, name: str, lower: float = 0.0, upper: float = math.inf) -> tuple[float, float]:
    """A number or a (min, max) pair as a checked (min, max) pair."""
    pair = (value, value) if isinstance(value, (int, float, np.number)) else tuple(value)
    if len(pair) != 2 or not lower <= pair[0] <= pair[1] <= upper:
        raise ValueError(f"{name} must be a number or a (min, max) pair in [{lower}, {upper}], got {value!r}.")
    return float(pair[0]), float(pair[1])


def _check_factor(factor: float | Sequence[float], name: str = "factor") -> float | tuple[float, ...]:
    values = (factor,) if isinstance(factor, (int, float, np.number)) else tuple(factor)
    if not values or not all(math.isfinite(f) and f >= 1 for f in values):
        raise ValueError(f"{name} must be a finite number >= 1 (or one per spatial axis), got {factor!r}.")
    return float(values[0]) if isinstance(factor, (int, float, np.number)) else tuple(float(f) for f in values)


def low_resolution_shape(spatial_shape: Sequence[int], factor: float | Sequence[float]) -> tuple[int, ...]:
    """Grid of an image of ``spatial_shape`` acquired ``factor`` times coarser: ``round(n / factor)`` per axis.

    Args:
        spatial_shape: (H, W) or (H, W, D).
        factor: one factor >= 1 for all axes, or one per axis.

    Raises:
        ValueError: when ``factor`` is < 1, has the wrong length, or leaves an axis with fewer than 1 voxel.
    """
    factor = _check_factor(factor)
    factors = (factor,) * len(spatial_shape) if isinstance(factor, float) else factor
    if len(factors) != len(spatial_shape):
        raise ValueError(f"factor needs one value per spatial axis of {tuple(spatial_shape)}, got {factor!r}.")
    size = tuple(round(n / f) for n, f in zip(spatial_shape, factors))
    if min(size) < 1:
        raise ValueError(
            f"factor={factor!r} is too large for spatial shape {tuple(spatial_shape)}: "
            f"round(n / factor) = {size} leaves an axis with fewer than 1 voxel."
        )
    return size


def _interpolate(x: torch.Tensor, size: Sequence[int], mode: str) -> torch.Tensor:
    """Resize (C, *spatial) to (C, *size); complex images are resized as real and imaginary parts."""
    if x.is_complex():
        return torch.complex(_interpolate(x.real, size, mode), _interpolate(x.imag, size, mode))
    align = False if mode in ("bilinear", "bicubic", "trilinear") else None
    return F.interpolate(x[None], size=tuple(size), mode=mode, align_corners=align)[0]


def _kspace_resample(x: torch.Tensor, keep: Sequence[int], size: Sequence[int]) -> torch.Tensor:
    """Keep the central ``keep`` frequencies of (C, *spatial) per axis and return them on a grid of ``size``.

    ``norm="forward"`` makes the DC coefficient the mean, so intensities survive a change of grid size.
    The result is complex: (C, *size).
    """
    dims = tuple(range(1, x.ndim))
    spectrum = torch.fft.fftshift(torch.fft.fftn(x, dim=dims, norm="forward"), dim=dims)

    def window(shape: Sequence[int]) -> tuple[slice, ...]:
        return (slice(None),) + tuple(slice(n // 2 - m // 2, n // 2 - m // 2 + m) for n, m in zip(shape, keep))

    out = spectrum.new_zeros((x.shape[0], *size))
    out[window(size)] = spectrum[window(x.shape[1:])]
    return torch.fft.ifftn(torch.fft.ifftshift(out, dim=dims), dim=dims, norm="forward")


class SimulateLowResolution(Transform):
    """Simulate an acquisition ``factor`` times coarser, shown on the original grid (super-resolution input).

    ``mode="area"`` averages the image over the voxels of the coarse grid, ``round(n / factor)`` per axis
    (anti-aliased, unlike nearest-neighbour zoom), then interpolates back onto the original grid.
    ``mode="kspace"`` keeps only the central ``round(n / factor)`` frequencies of the FFT per axis and
    zero-fills the rest, the truncation of an MR acquisition with a smaller matrix.

    Args:
        factor: resolution loss, any number >= 1 (e.g. ``2 * sqrt(2)``, 4, 16) or one per spatial axis;
            1 is the identity.
        mode: ``"area"`` or ``"kspace"``.
        upsample_mode: area mode only, interpolation back onto the original grid: ``"auto"`` (bicubic in 2D,
            trilinear in 3D), ``"linear"``, ``"bicubic"`` (2D only) or ``"nearest"`` (blocky voxels).
        magnitude: kspace mode with a real input only: return the magnitude of the truncated image (as an MR
            scanner does; needs a non-negative image) if True, its real part (signed images) if False.
            Complex inputs always give the complex result.

    Input ``(C, *spatial)``, output the same shape, type and dtype. ``downsample`` gives the coarse image itself.
    """

    backend = _BACKEND

    def __init__(
        self,
        factor: float | Sequence[float],
        mode: str = "area",
        upsample_mode: str = "auto",
        magnitude: bool = True,
    ) -> None:
        if mode not in ("area", "kspace"):
            raise ValueError(f"mode must be 'area' or 'kspace', got {mode!r}.")
        if upsample_mode not in _UPSAMPLE:
            raise ValueError(f"upsample_mode must be one of {sorted(_UPSAMPLE)}, got {upsample_mode!r}.")
        self.factor = _check_factor(factor)
        self.mode = mode
        self.upsample_mode = upsample_mode
        self.magnitude = magnitude
        self.params: dict[str, Any] = {}

    def _interpolation(self, ndim: int) -> str:
        if self.mode == "kspace":
            return "zero_fill"
        mode = _UPSAMPLE[self.upsample_mode][ndim - 2]
        if mode is None:
            raise ValueError(f"upsample_mode={self.upsample_mode!r} supports 2D images only; use 'auto' in 3D.")
        return mode

    def _finish(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if x.is_complex() or not out.is_complex():
            return out
        return out.abs() if self.magnitude else out.real

    def downsample(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """The coarse image, ``(C, *spatial)`` -> ``(C, *low_resolution_shape(spatial, factor))``.

        A MetaTensor keeps its metadata with the affine rescaled to the coarser voxels (same field of view).
        """
        shape = _spatial_shape(img)
        size = low_resolution_shape(shape, self.factor)
        x = _to_work(img)
        low = _kspace_resample(x, size, size) if self.mode == "kspace" else _interpolate(x, size, "area")
        out = _like(self._finish(low, x), img)
        if isinstance(out, MetaTensor):
            # voxel i of the coarse grid is centred on voxel (i + 0.5) * n / m - 0.5 of the original grid
            scale = torch.tensor([n / m for n, m in zip(shape, size)], dtype=torch.float64)
            to_fine = torch.eye(out.affine.shape[-1], dtype=torch.float64)
            to_fine[: len(shape), : len(shape)] = torch.diag(scale)
            to_fine[: len(shape), -1] = (scale - 1) / 2
            out.affine = (out.affine.to(torch.float64) @ to_fine).to(out.affine.dtype)
        return out

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Args:
        img: ``(C, H, W)`` or ``(C, H, W, D)``.

        Returns: the degraded image, same shape, type and dtype.
        """
        shape = _spatial_shape(img)
        size = low_resolution_shape(shape, self.factor)
        interpolation = self._interpolation(len(shape))
        self.params = {
            "factor": self.factor if isinstance(self.factor, float) else list(self.factor),
            "mode": self.mode,
            "upsample_mode": interpolation,
            "low_res_shape": list(size),
        }
        x = _to_work(img)
        if size == shape:
            out = x.clone()
        elif self.mode == "kspace":
            out = self._finish(_kspace_resample(x, size, shape), x)
        else:
            out = _interpolate(_interpolate(x, size, "area"), shape, interpolation)
        return _like(out, img)


class RandLowResolution(RandomizableTransform):
    """:class:`SimulateLowResolution` with a factor drawn per call, applied with probability ``prob``.

    Args:
        factors: factors to choose from uniformly; default :data:`SR_FACTORS` (2*sqrt(2), 4, 4*sqrt(2), 8,
            8*sqrt(2), 16). Give either ``factors`` or ``factor_range``.
        factor_range: (min, max) to draw the factor from uniformly instead.
        prob: probability of degrading; otherwise the output is an unchanged copy (recorded as factor 1).
        mode, upsample_mode, magnitude: as in :class:`SimulateLowResolution`.
        seed: seed of the random state (same as calling ``set_random_state(seed)``).
    """

    backend = _BACKEND

    def __init__(
        self,
        factors: Sequence[float] | None = None,
        factor_range: tuple[float, float] | None = None,
        prob: float = 1.0,
        mode: str = "area",
        upsample_mode: str = "auto",
        magnitude: bool = True,
        seed: int | None = None,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        if factors is not None and factor_range is not None:
            raise ValueError("give either factors or factor_range, not both.")
        self.factor_range = None if factor_range is None else _as_range(factor_range, "factor_range", 1.0)
        self.factors = tuple(float(_check_factor(f, "factors")) for f in (factors or SR_FACTORS))
        self.simulate = SimulateLowResolution(1.0, mode, upsample_mode, magnitude)
        self.factor = 1.0
        if seed is not None:
            self.set_random_state(seed)

    @property
    def params(self) -> dict[str, Any]:
        return self.simulate.params

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        if self.factor_range is not None:
            factor = self.R.uniform(*self.factor_range)
        else:
            factor = self.factors[self.R.randint(len(self.factors))]
        self.factor = float(factor) if self._do_transform else 1.0

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """Args:
        img: ``(C, H, W)`` or ``(C, H, W, D)``.
        randomize: draw a new factor first (False reuses the last one, as the dictionary twin does).
        """
        if randomize:
            self.randomize()
        self.simulate.factor = self.factor
        return self.simulate(img)


class RandMixedNoise(RandomizableTransform):
    """Gaussian (or Rician) noise plus salt-and-pepper, the X-ray/MR denoising degradation.

    ``out = x + sigma * n1`` (or, with ``rician=True``, the MR magnitude ``|x + sigma * n1 + i sigma * n2|``),
    then a ``salt_pepper`` fraction of the voxels is set to the pepper (low) or salt (high) value, half each.
    MONAI's ``RandGaussianNoise``/``RandRicianNoise`` have no salt-and-pepper part.

    Args:
        sigma: standard deviation of the Gaussian noise, a number or a (min, max) range drawn per call.
        salt_pepper: fraction of voxels replaced by salt or pepper, a number or a (min, max) range.
        rician: Rician instead of additive Gaussian noise.
        prob: probability of adding noise; otherwise the output is an unchanged copy (recorded as zero noise).
        low: pepper value; default the minimum of the clean image.
        high: salt value; default the maximum of the clean image.
        seed: seed of the random state (same as calling ``set_random_state(seed)``).

    Input: a real image ``(C, *spatial)``; output the same shape, type and dtype (integer dtypes are rounded
    and clipped). Noise is drawn on the image's device from a sub-seed, recorded as ``noise_seed``.
    """

    backend = _BACKEND

    def __init__(
        self,
        sigma: float | tuple[float, float] = 0.1,
        salt_pepper: float | tuple[float, float] = 0.05,
        rician: bool = False,
        prob: float = 1.0,
        low: float | None = None,
        high: float | None = None,
        seed: int | None = None,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        self.sigma_range = _as_range(sigma, "sigma")
        self.salt_pepper_range = _as_range(salt_pepper, "salt_pepper", 0.0, 1.0)
        self.rician = rician
        self.low, self.high = low, high
        self.sigma, self.salt_pepper, self.noise_seed = 0.0, 0.0, 0
        self.params: dict[str, Any] = {}
        if seed is not None:
            self.set_random_state(seed)

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self.sigma = float(self.R.uniform(*self.sigma_range))
        self.salt_pepper = float(self.R.uniform(*self.salt_pepper_range))
        self.noise_seed = int(self.R.randint(_MAX_SEED))

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """Args:
        img: ``(C, H, W)`` or ``(C, H, W, D)``, real-valued.
        randomize: draw new parameters and noise first (False reuses the last draw).
        """
        _spatial_shape(img)
        if randomize:
            self.randomize()
        x = _to_work(img)
        if x.is_complex():
            raise ValueError("img must be real-valued; split complex images into channels with SplitComplex.")
        pepper = float(x.min()) if self.low is None else float(self.low)
        salt = float(x.max()) if self.high is None else float(self.high)
        sigma, fraction = (self.sigma, self.salt_pepper) if self._do_transform else (0.0, 0.0)
        self.params = {
            "sigma": sigma,
            "salt_pepper": fraction,
            "rician": self.rician,
            "pepper_value": pepper,
            "salt_value": salt,
            "noise_seed": self.noise_seed,
        }
        if not self._do_transform:
            return _like(x.clone(), img)
        generator = torch.Generator(device=x.device).manual_seed(self.noise_seed)

        def draw(sample: Any) -> torch.Tensor:
            return sample(x.shape, generator=generator, device=x.device, dtype=x.dtype)

        out = x + sigma * draw(torch.randn)
        if self.rician:
            out = torch.hypot(out, sigma * draw(torch.randn))
        u = draw(torch.rand)
        out = torch.where(u < fraction / 2, pepper, torch.where(u < fraction, salt, out))
        return _like(out, img)


def _paint_boxes(mask: np.ndarray, target: int, enough: int, num_boxes: int, rng: np.random.Generator) -> int:
    """Add up to ``num_boxes`` random boxes to ``mask`` (in place) without passing ``target`` voxels.

    Boxes share the missing volume and have random aspect ratios; when overlaps leave fewer than ``enough``
    voxels, smaller boxes top the mask up. Returns the number of masked voxels.
    """
    shape = np.array(mask.shape)
    count = int(mask.sum())
    for i in range(1000):
        if count >= target or (i >= num_boxes and count >= enough):
            break
        volume = (target - count) / max(num_boxes - i, 1)
        log_aspect = rng.uniform(-0.5, 0.5, len(shape))
        sides = np.clip(np.floor(volume ** (1 / len(shape)) * np.exp(log_aspect - log_aspect.mean())), 1, shape)
        start = rng.integers(0, shape - sides + 1)
        region = tuple(slice(a, a + int(s)) for a, s in zip(start, sides))
        count += int((~mask[region]).sum())
        mask[region] = True
    return count


def _thick_segment(shape: Sequence[int], start: np.ndarray, end: np.ndarray, radius: float):
    """Voxels within ``radius`` of the segment ``start``-``end``: (region slices, boolean array on the region)."""
    lo = np.maximum(np.floor(np.minimum(start, end) - radius), 0).astype(int)
    hi = np.minimum(np.ceil(np.maximum(start, end) + radius) + 1, shape).astype(int)
    grid = np.stack(np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi)), indexing="ij"), axis=-1)
    direction = end - start
    t = np.clip((grid - start) @ direction / max(direction @ direction, 1e-12), 0.0, 1.0)
    inside = np.linalg.norm(grid - start - t[..., None] * direction, axis=-1) <= radius
    return tuple(slice(a, b) for a, b in zip(lo, hi)), inside


def _paint_strokes(
    mask: np.ndarray, target: int, limit: int, width: tuple[float, float], rng: np.random.Generator
) -> int:
    """Add free-form strokes to ``mask`` (in place) until it has ``target`` voxels, never more than ``limit``.

    A stroke is a random walk of 4-12 straight segments of random direction, a length of 5-25% of the smallest
    side, and a thickness of ``width`` (fractions of the smallest side), thickened where thin strokes would need
    more than about 100 segments to cover ``target`` (large areas, 3D). Returns the number of masked voxels.
    """
    shape = np.array(mask.shape)
    side = shape.min()
    count = int(mask.sum())
    # a segment of length 0.15 * side covers about (2 * radius) ** (ndim - 1) * 0.15 * side voxels
    thinnest = max(0.5 * ((target - count) / (15 * side)) ** (1 / (len(shape) - 1)), 0.5)
    for _ in range(200):
        if count >= target:
            break
        point = rng.uniform(0, shape - 1)
        radius = max(rng.uniform(*width) * side / 2, thinnest)
        for _ in range(rng.integers(4, 13)):
            direction = rng.normal(size=len(shape))
            end = np.clip(point + rng.uniform(0.05, 0.25) * side * direction / np.linalg.norm(direction), 0, shape - 1)
            for _ in range(3):  # halve the segment while it would pass the limit
                region, inside = _thick_segment(mask.shape, point, end, radius)
                added = int((inside & ~mask[region]).sum())
                if count + added <= limit:
                    mask[region] |= inside
                    count, point = count + added, end
                    break
                end = (point + end) / 2
            if count >= target:
                break
    return count


class RandInpaintingMask(RandomizableTransform):
    """Random inpainting masks (1 = missing, to inpaint) covering a requested fraction of the image.

    ``mask_type="box"`` draws ``num_boxes`` axis-aligned boxes, ``"stroke"`` free-form thick strokes (random
    walks of line segments), ``"mixed"`` boxes for half of the area and strokes for the rest; in 2D and 3D.
    The masked fraction lies in [``min_fraction``, ``max_fraction``]. Each mask is generated from a sub-seed
    (``mask_seed`` in ``params``) so that ``make_mask(spatial_shape, mask_seed)`` regenerates it.
    With ``center_box`` every mask is the same central box (fixed test-set holes); the random parameters are
    then unused. MONAI's ``RandCoarseDropout`` fills holes but neither returns the mask nor controls its area.

    Args:
        mask_type: ``"box"``, ``"stroke"`` or ``"mixed"``.
        min_fraction: smallest masked fraction of the spatial grid, in [0, 1].
        max_fraction: largest masked fraction, >= ``min_fraction``.
        num_boxes: number of boxes, or a (min, max) range, inclusive.
        stroke_width: (min, max) stroke thickness as a fraction of the smallest spatial side.
        center_box: size of a deterministic central box, an int for every axis or one per axis
            (e.g. ``(32, 32)``).
        apply_mask: return ``(masked image, mask)`` instead of the mask alone.
        fill_value: value of the masked voxels in the masked image.
        prob: probability of masking; otherwise the mask is empty.
        seed: seed of the random state (same as calling ``set_random_state(seed)``).

    Input ``(C, *spatial)``; mask ``(1, *spatial)`` with values 0/1, of the input's type and floating dtype
    (MetaTensor metadata included); masked image the same shape, type and dtype as the input.
    """

    backend = _BACKEND

    def __init__(
        self,
        mask_type: str = "box",
        min_fraction: float = 0.1,
        max_fraction: float = 0.3,
        num_boxes: int | tuple[int, int] = (1, 3),
        stroke_width: tuple[float, float] = (0.03, 0.1),
        center_box: int | Sequence[int] | None = None,
        apply_mask: bool = False,
        fill_value: float = 0.0,
        prob: float = 1.0,
        seed: int | None = None,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        if mask_type not in ("box", "stroke", "mixed"):
            raise ValueError(f"mask_type must be 'box', 'stroke' or 'mixed', got {mask_type!r}.")
        if not 0 <= min_fraction <= max_fraction <= 1:
            raise ValueError(
                f"min_fraction and max_fraction must satisfy 0 <= min_fraction <= max_fraction <= 1, "
                f"got {min_fraction!r} and {max_fraction!r}."
            )
        boxes = _as_range(num_boxes, "num_boxes", 1)
        if not all(float(b).is_integer() for b in boxes):
            raise ValueError(f"num_boxes must be an int or a (min, max) pair of ints >= 1, got {num_boxes!r}.")
        if center_box is not None:
            sizes = (center_box,) if isinstance(center_box, (int, np.integer)) else tuple(center_box)
            if not sizes or not all(isinstance(s, (int, np.integer)) and s >= 1 for s in sizes):
                raise ValueError(f"center_box must be a positive int or one per spatial axis, got {center_box!r}.")
        self.mask_type = mask_type
        self.min_fraction, self.max_fraction = float(min_fraction), float(max_fraction)
        self.num_boxes = (int(boxes[0]), int(boxes[1]))
        self.stroke_width = _as_range(stroke_width, "stroke_width", 0.0, 1.0)
        self.center_box = center_box
        self.apply_mask = apply_mask
        self.fill_value = float(fill_value)
        self.mask_seed = 0
        self.params: dict[str, Any] = {}
        if seed is not None:
            self.set_random_state(seed)

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self.mask_seed = int(self.R.randint(_MAX_SEED))

    def make_mask(self, spatial_shape: Sequence[int], mask_seed: int) -> np.ndarray:
        """The boolean mask of ``spatial_shape`` that ``mask_seed`` gives (the central box if ``center_box``)."""
        shape = tuple(int(n) for n in spatial_shape)
        mask = np.zeros(shape, dtype=bool)
        if self.center_box is not None:
            box = self.center_box
            sizes = (box,) * len(shape) if isinstance(box, (int, np.integer)) else tuple(box)
            if len(sizes) != len(shape) or any(s > n for s, n in zip(sizes, shape)):
                raise ValueError(f"center_box={self.center_box!r} does not fit in spatial shape {shape}.")
            mask[tuple(slice((n - s) // 2, (n - s) // 2 + s) for n, s in zip(shape, sizes))] = True
            return mask
        rng = np.random.default_rng(mask_seed)
        total = mask.size
        low, high = math.ceil(self.min_fraction * total), math.floor(self.max_fraction * total)
        target = int(rng.integers(low, max(high, low) + 1))
        num_boxes = int(rng.integers(self.num_boxes[0], self.num_boxes[1] + 1))
        if self.mask_type == "box":
            _paint_boxes(mask, target, low, num_boxes, rng)
        else:
            if self.mask_type == "mixed":
                _paint_boxes(mask, target // 2, target // 2, num_boxes, rng)
            _paint_strokes(mask, target, high, self.stroke_width, rng)
        return mask

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> Any:
        """Args:
        img: ``(C, H, W)`` or ``(C, H, W, D)``; only its shape is used unless ``apply_mask``.
        randomize: draw a new mask first (False reuses the last ``mask_seed``).

        Returns: the mask ``(1, *spatial)``, or ``(masked image, mask)`` with ``apply_mask``.
        """
        shape = _spatial_shape(img)
        if randomize:
            self.randomize()
        if self.center_box is None and not self._do_transform:
            mask = np.zeros(shape, dtype=bool)
        else:
            mask = self.make_mask(shape, self.mask_seed)
        axes = range(mask.ndim)
        hit = [np.flatnonzero(mask.any(axis=tuple(a for a in axes if a != axis))) for axis in axes]
        self.params = {
            "mask_type": "center" if self.center_box is not None else self.mask_type,
            "mask_fraction": float(mask.mean()),
            "mask_seed": -1 if self.center_box is not None else self.mask_seed,
            "mask_bbox": [[int(h[0]), int(h[-1]) + 1] if h.size else [0, 0] for h in hit],
            "fill_value": self.fill_value,
        }
        x = _to_work(img)
        mask_t = torch.as_tensor(mask, device=x.device)[None]
        mask_out = _like(mask_t.to(x.real.dtype), img, dtype=x.real.dtype)
        if not self.apply_mask:
            return mask_out
        return _like(x.masked_fill(mask_t, self.fill_value), img), mask_out


class SplitComplex(Transform):
    """Complex image ``(C, *spatial)`` -> real ``(2C, *spatial)``: real parts of all channels, then imaginary parts.

    complex64 gives float32, complex128 float64. :class:`JoinComplex` inverts it exactly.
    """

    backend = _BACKEND

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        x = convert_to_tensor(img, track_meta=False)
        if not x.is_complex():
            raise ValueError(f"img must have a complex dtype, got {img.dtype}.")
        out = torch.cat([x.real, x.imag], dim=0)
        return _like(out, img, dtype=out.dtype)


class JoinComplex(Transform):
    """Real ``(2C, *spatial)`` [real parts, imaginary parts] -> complex ``(C, *spatial)``; inverse of SplitComplex.

    float32 (or smaller) gives complex64, float64 complex128.
    """

    backend = _BACKEND

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        x = _to_work(img)
        if x.is_complex() or x.shape[0] % 2:
            raise ValueError(f"img must be real with an even number of channels, got {img.dtype} {tuple(img.shape)}.")
        real, imag = x.chunk(2, dim=0)
        out = torch.complex(real, imag)
        return _like(out, img, dtype=out.dtype)
