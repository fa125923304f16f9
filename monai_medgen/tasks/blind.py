"""Blind training degradations per task family and the residual formulation shared by training and inference.

A restoration model here is trained for a *family* of degradations, not one fixed setting:

- ``"sr"``: area downsampling by a factor drawn per image: isotropic in-plane factors in [2, 8] (log-uniform, so
  the seeds' 2*sqrt2 .. 8*sqrt2 all lie in it) and, with ``through_plane_fraction``, a factor in [2, 6] along one
  axis only (thick slices seen in a plane that contains the slice axis);
- ``"denoise"``: Gaussian, Rician or Poisson noise of level 0.01..0.2, plus salt-and-pepper 0..10% on half of the
  images; the model is told a noise level estimated from the image (:func:`estimate_noise_sigma`), so it runs
  blind on user data;
- ``"inpaint"``: boxes, free-form strokes, irregular blobs and large holes; the network sees the holes filled by a
  membrane (:func:`~monai_medgen.tasks.operators.fill_holes`) and by a thin plate
  (:func:`~monai_medgen.tasks.operators.biharmonic_fill`, the classical biharmonic estimate).

The network never predicts the image itself but the residual to the classical estimate ``base`` (bicubic for SR;
for denoising the noisy image with its salt-and-pepper impulses replaced by their median; the thin-plate fill for
inpainting), in [-1, 1] image units: ``residual = 2 (x - base)``.  :func:`make_condition` builds the condition
channels and ``base`` from a measurement for training and inference alike, so both see exactly the same inputs.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import MapTransform, Randomizable

from monai_medgen.tasks.operators import (
    Noise,
    SuperResolution,
    biharmonic_fill,
    estimate_noise_sigma,
    fill_holes,
    median3,
    switching_median,
)
from monai_medgen.transforms import RandInpaintingMask

__all__ = [
    "FAMILIES",
    "BlindDegradationd",
    "check_family",
    "cond_channels_of",
    "make_condition",
    "residual_target",
]

FAMILIES = ("sr", "denoise", "inpaint")
SIGMA_SCALE = 5.0  # the noise-level channel holds 5 * sigma: 1 at the top of the trained range (0.2)


def check_family(family: str) -> str:
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}.")
    return family


def cond_channels_of(family: str) -> int:
    """Condition channels of a family's network: SR 1 (base), denoising 3 (noisy, median, noise level),
    inpainting 4 (see :data:`INPAINT_LAYOUTS`)."""
    return {"sr": 1, "denoise": 3, "inpaint": 4}[check_family(family)]


INPAINT_LAYOUTS = {
    2: "membrane fill, mask; base: membrane fill",
    3: "membrane fill, mask, thin-plate fill; base: membrane fill",
    4: "membrane fill, mask, thin-plate fill, 2 (thin plate - membrane); base: thin-plate fill",
}
"""An inpainting network's condition layout by its number of condition channels.  Each layout extends the one
before, so weights trained with fewer channels initialise the next (their new input channels starting at zero);
2 and 3 are the layouts of networks trained before the thin plate became the base, still restored exactly as
they were trained."""


def make_condition(
    family: str,
    measured: torch.Tensor,
    mask: torch.Tensor | None = None,
    sigma: torch.Tensor | None = None,
    channels: int | None = None,
    impulse_values: tuple[float, ...] = (0.0, 1.0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(condition in [-1, 1] units, base in [0, 1] units)`` for a batch.

    Args:
        family: ``"sr"``, ``"denoise"`` or ``"inpaint"``.
        measured: (B, 1, *spatial) in [0, 1]: for SR the low-resolution image already interpolated onto the
            output grid (:meth:`SuperResolution.base`), for denoising the noisy image, for inpainting the image
            with anything in the holes.
        mask: inpainting only, (B, 1, *spatial), 1 = missing.
        sigma: denoising only, (B,) noise level; None: estimated from ``measured``.
        channels: inpainting only: the network's condition channels, one of :data:`INPAINT_LAYOUTS`
            (None: :func:`cond_channels_of`, the current layout).
        impulse_values: denoising only: the values salt-and-pepper takes (the ends of the measurement's intensity
            range, 0 and 1 in [0, 1] units); impulses at them are replaced by their median first
            (:func:`~monai_medgen.tasks.operators.switching_median`), and the result is the condition and the base.
    """
    check_family(family)
    if family == "sr":
        return measured * 2 - 1, measured
    if family == "denoise":
        measured = switching_median(measured, impulse_values)
        level = estimate_noise_sigma(measured) if sigma is None else torch.as_tensor(sigma).to(measured).reshape(-1)
        level_map = (level * SIGMA_SCALE).reshape(-1, *([1] * (measured.ndim - 1))).expand_as(measured)
        cond = torch.cat([measured * 2 - 1, median3(measured) * 2 - 1, level_map], 1)
        return cond, measured
    if mask is None:
        raise ValueError("mask is required for inpainting (1 = missing).")
    channels = cond_channels_of(family) if channels is None else int(channels)
    if channels not in INPAINT_LAYOUTS:
        raise ValueError(f"channels must be one of {sorted(INPAINT_LAYOUTS)} for inpainting, got {channels}.")
    mask = mask.to(measured)
    membrane = fill_holes(measured, mask)
    cond = [membrane * 2 - 1, mask]
    if channels == 2:
        return torch.cat(cond, 1), membrane
    thin = biharmonic_fill(measured, mask).clamp(-0.5, 1.5)
    cond.append(thin * 2 - 1)
    if channels == 3:
        return torch.cat(cond, 1), membrane
    cond.append(2 * (thin - membrane))
    return torch.cat(cond, 1), thin


def residual_target(truth: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """``2 (truth - base)``: what the network learns to generate."""
    return 2 * (truth - base)


class BlindDegradationd(Randomizable, MapTransform):
    """Draw one degradation of the family per item and write the training pair.

    Input ``{"image": (1, *spatial) in [0, 1]}``; output ``"image"``: the residual target, ``"cond"``: the
    condition (:func:`make_condition`), ``"base"``: the classical estimate, ``"truth"``: the clean image.

    Args:
        keys: the clean image key (one key).
        family: ``"sr"``, ``"denoise"`` or ``"inpaint"``.
        factor_range: SR isotropic factors, drawn log-uniformly.
        through_plane_range: SR one-axis factors (uniform).
        through_plane_fraction: share of SR items degraded along one axis only (1.0: only those).
        sigma_range: denoising noise level (Gaussian / Rician sigma; Poisson peak set to match at mid grey).
        salt_pepper_range: impulse fraction, applied to ``salt_pepper_prob`` of the items.
        hole_fraction: masked area range for inpainting.
    """

    def __init__(
        self,
        keys="image",
        family: str = "sr",
        factor_range: tuple[float, float] = (2.0, 8.0),
        through_plane_range: tuple[float, float] = (2.0, 6.0),
        through_plane_fraction: float = 0.25,
        sigma_range: tuple[float, float] = (0.01, 0.2),
        salt_pepper_range: tuple[float, float] = (0.0, 0.1),
        salt_pepper_prob: float = 0.5,
        hole_fraction: tuple[float, float] = (0.03, 0.4),
    ):
        MapTransform.__init__(self, keys)
        self.family = check_family(family)
        self.factor_range, self.through_plane_range = factor_range, through_plane_range
        self.through_plane_fraction = float(through_plane_fraction)
        self.sigma_range, self.salt_pepper_range = sigma_range, salt_pepper_range
        self.salt_pepper_prob = float(salt_pepper_prob)
        self.hole_fraction = hole_fraction
        lo, hi = hole_fraction
        self._masks = {
            "box": RandInpaintingMask("box", lo, hi, num_boxes=(1, 3)),
            "stroke": RandInpaintingMask("stroke", lo, min(hi, 0.3)),
            "mixed": RandInpaintingMask("mixed", lo, hi),
        }

    # ---- draws ---------------------------------------------------------------------------------
    def randomize(self, data=None) -> None:  # parameters are drawn inside __call__ from self.R
        pass

    def _sr(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nd = x.ndim - 2
        if self.R.uniform() < self.through_plane_fraction:
            factor = [1.0] * nd
            factor[int(self.R.randint(nd))] = float(self.R.uniform(*self.through_plane_range))
        else:
            lo, hi = (math.log(v) for v in self.factor_range)
            factor = [math.exp(self.R.uniform(lo, hi))] * nd
        op = SuperResolution(factor)
        measured = op.base(op.degrade(x), x.shape[2:]).clamp(-0.5, 1.5)
        return make_condition("sr", measured)

    def _denoise(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sigma = float(self.R.uniform(*self.sigma_range))
        kind = ("gaussian", "rician", "poisson")[int(self.R.choice(3, p=[0.5, 0.3, 0.2]))]
        sp = float(self.R.uniform(*self.salt_pepper_range)) if self.R.uniform() < self.salt_pepper_prob else 0.0
        peak = 0.5 / sigma**2  # Poisson: the same standard deviation at intensity 0.5
        gen = torch.Generator().manual_seed(int(self.R.randint(2**31 - 1)))
        noisy = Noise(sigma, kind, sp, peak).degrade(x, generator=gen)
        return make_condition("denoise", noisy)

    def _blob_mask(self, shape) -> np.ndarray:
        """Irregular blobs: a smoothed random field thresholded at the quantile of the wanted area."""

        field = torch.as_tensor(self.R.standard_normal((1, 1, *shape)), dtype=torch.float32)
        k = max(3, int(min(shape) * self.R.uniform(0.05, 0.2)) | 1)
        for _ in range(3):
            field = (
                F.avg_pool2d(field, k, stride=1, padding=k // 2)
                if len(shape) == 2
                else F.avg_pool3d(field, k, 1, k // 2)
            )
        frac = self.R.uniform(*self.hole_fraction)
        thr = torch.quantile(field.flatten(), 1 - frac)
        return (field[0, 0] > thr).numpy().astype(np.float32)

    def _inpaint(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        shape = tuple(x.shape[2:])
        kind = ("box", "stroke", "mixed", "blob", "large")[int(self.R.randint(5))]
        if kind == "blob":
            mask = self._blob_mask(shape)
        elif kind == "large":  # one large box, 25-50% of the image
            side = [int(round(n * math.sqrt(self.R.uniform(0.25, 0.5)))) for n in shape]
            start = [int(self.R.randint(0, n - s + 1)) for n, s in zip(shape, side)]
            mask = np.zeros(shape, np.float32)
            mask[tuple(slice(a, a + s) for a, s in zip(start, side))] = 1
        else:
            mask = np.asarray(self._masks[kind].make_mask(shape, int(self.R.randint(2**31 - 1))), np.float32)
            mask = mask.reshape(shape)
        if mask.sum() == 0:
            mask[tuple(n // 2 for n in shape)] = 1
        m = torch.as_tensor(mask)[None, None]
        cond, base = make_condition("inpaint", x * (1 - m), mask=m)
        return cond, base, m

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        key = self.keys[0]
        x = torch.as_tensor(np.asarray(d[key]) if not torch.is_tensor(d[key]) else d[key], dtype=torch.float32)[None]
        if self.family == "sr":
            cond, base = self._sr(x)
            residual = residual_target(x, base)
        elif self.family == "denoise":
            cond, base = self._denoise(x)
            residual = residual_target(x, base)
        else:
            cond, base, m = self._inpaint(x)
            residual = residual_target(x, base) * m
        d[key] = residual[0]
        d["cond"] = cond[0]
        d["base"] = base[0]
        d["truth"] = x[0]
        return d
