"""Forward models of the restoration families, their data-consistency projections and classical base estimates.

Everything works on batches ``(B, C, *spatial)`` of float tensors, 2D or 3D, on any device.

- :class:`SuperResolution`: ``y = A x``, area averaging onto a grid ``factor`` times coarser per axis (the
  same operator as :class:`~monai_medgen.transforms.SimulateLowResolution`); ``base`` interpolates ``y`` back
  (bicubic in 2D, per-axis cubic through separable passes otherwise); ``project`` is the exact range-null-space
  projection ``x + A^T (A A^T)^{-1} (y - A x)`` (DDNM), with ``A^T`` by autograd and ``(A A^T)^{-1}`` by
  conjugate gradients on the low-resolution grid, so ``A project(x) = y`` for any factor, integer or not.
- :class:`Noise`: additive Gaussian, Rician (MR magnitude), Poisson and salt-and-pepper noise; its base
  estimate is the noisy image itself (the model learns the residual, as DnCNN does).
- :class:`Inpainting`: a 0/1 mask (1 = missing); ``project`` keeps the known voxels exactly; the base estimate
  is a smooth membrane fill (:func:`fill_holes`); :func:`biharmonic_fill` is the smoother (C1) classical fill the
  inpainting network also sees.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "Inpainting",
    "Noise",
    "RobustIntensity",
    "SuperResolution",
    "biharmonic_fill",
    "estimate_noise_sigma",
    "fill_holes",
    "median3",
    "switching_median",
]


def _spatial(x: torch.Tensor) -> tuple[int, ...]:
    if x.ndim not in (4, 5):
        raise ValueError(f"expected a batch (B, C, H, W) or (B, C, H, W, D), got shape {tuple(x.shape)}.")
    return tuple(int(s) for s in x.shape[2:])


def _per_item(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1)))


# ---------------------------------------------------------------------------------------------
# super-resolution
# ---------------------------------------------------------------------------------------------
class SuperResolution:
    """Resolution loss by area averaging, ``factor`` per spatial axis (1 = axis kept).

    Args:
        factor: one number for every spatial axis, or one per axis (e.g. ``(1, 4)``: 4x along the second
            axis only, the through-plane loss of thick slices seen in a plane that contains that axis).
        cg_iterations: conjugate-gradient iterations of the projection (converges in one for integer factors).
    """

    def __init__(self, factor: float | Sequence[float], cg_iterations: int = 30):
        self.factor = factor
        self.cg_iterations = int(cg_iterations)

    def factors(self, ndim: int) -> tuple[float, ...]:
        f = (
            (float(self.factor),) * ndim
            if isinstance(self.factor, (int, float))
            else tuple(float(v) for v in self.factor)
        )
        if len(f) != ndim or not all(math.isfinite(v) and v >= 1 for v in f):
            raise ValueError(
                f"factor must be a number >= 1 or {ndim} of them (one per spatial axis), got {self.factor!r}."
            )
        return f

    def low_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """Grid of the measurement: ``max(1, round(n / f))`` per axis."""
        return tuple(max(1, int(round(n / f))) for n, f in zip(shape, self.factors(len(shape))))

    def degrade(self, x: torch.Tensor) -> torch.Tensor:
        """``A x``: (B, C, *spatial) -> (B, C, *low_shape)."""
        shape = _spatial(x)
        low = self.low_shape(shape)
        return x if low == shape else F.interpolate(x, size=low, mode="area")

    def base(self, y: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """The classical estimate: ``y`` interpolated onto ``shape`` (bicubic in 2D; in 3D cubic along each
        resampled axis in turn, trilinear-free)."""
        shape = tuple(int(s) for s in shape)
        if _spatial(y) == shape:
            return y.clone()
        if y.ndim == 4:
            return F.interpolate(y, size=shape, mode="bicubic", align_corners=False)
        out = y
        for axis in range(3):  # separable cubic: move the axis into a 2D plane with a unit partner
            if out.shape[2 + axis] == shape[axis]:
                continue
            moved = out.movedim(2 + axis, -1)
            lead = moved.shape[:-1]
            flat = moved.reshape(-1, 1, 1, moved.shape[-1])
            flat = F.interpolate(flat, size=(1, shape[axis]), mode="bicubic", align_corners=False)
            out = flat.reshape(*lead, shape[axis]).movedim(-1, 2 + axis)
        return out

    def adjoint(self, r: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """``A^T r`` for r on the low-resolution grid (the exact adjoint of :meth:`degrade`, by autograd)."""
        probe = torch.zeros((*r.shape[:2], *shape), dtype=r.dtype, device=r.device, requires_grad=True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self.degrade(probe), probe, grad_outputs=r)
        return grad

    def project(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The image closest to ``x`` (least squares) whose degradation equals ``y`` exactly."""
        shape = _spatial(x)
        if self.low_shape(shape) == shape:
            return y.to(x.dtype).clone()
        r = (y.to(x.dtype) - self.degrade(x)).double()
        dims = tuple(range(1, r.ndim))

        def normal(u: torch.Tensor) -> torch.Tensor:
            return self.degrade(self.adjoint(u, shape))

        # conjugate gradients on A A^T u = r, one scalar step per batch item
        u = torch.zeros_like(r)
        res = r.clone()
        p = res.clone()
        rs = (res * res).sum(dims)
        scale = rs.clamp_min(1e-300)
        for _ in range(self.cg_iterations):
            if bool((rs <= 1e-24 * scale).all()):
                break
            ap = normal(p)
            step = rs / (p * ap).sum(dims).clamp_min(1e-300)
            u = u + _per_item(step, u) * p
            res = res - _per_item(step, res) * ap
            rs_new = (res * res).sum(dims)
            p = res + _per_item(rs_new / rs.clamp_min(1e-300), p) * p
            rs = rs_new
        return x + self.adjoint(u, shape).to(x.dtype)


# ---------------------------------------------------------------------------------------------
# noise
# ---------------------------------------------------------------------------------------------
class Noise:
    """Additive noise on [0, 1] intensities: ``kind`` ``"gaussian"``, ``"rician"`` (magnitude of a complex
    Gaussian, MR) or ``"poisson"`` (``peak`` counts at intensity 1), then a ``salt_pepper`` fraction of the voxels
    set to 0 or 1 (half each).

    Args:
        sigma: Gaussian / Rician standard deviation (intensity units); unused for Poisson.
        kind: ``"gaussian"``, ``"rician"`` or ``"poisson"``.
        salt_pepper: fraction of impulse voxels in [0, 1].
        peak: Poisson counts at intensity 1 (lower: noisier).
    """

    KINDS = ("gaussian", "rician", "poisson")

    def __init__(self, sigma: float = 0.1, kind: str = "gaussian", salt_pepper: float = 0.0, peak: float = 100.0):
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {self.KINDS}, got {kind!r}.")
        if not (math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}.")
        if not 0 <= salt_pepper <= 1:
            raise ValueError(f"salt_pepper must be in [0, 1], got {salt_pepper!r}.")
        if not (math.isfinite(peak) and peak > 0):
            raise ValueError(f"peak must be a finite number > 0, got {peak!r}.")
        self.sigma, self.kind, self.salt_pepper, self.peak = float(sigma), kind, float(salt_pepper), float(peak)

    def degrade(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A noisy copy of ``x`` (any shape), drawn from ``generator``."""

        def randn():
            return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)

        if self.kind == "gaussian":
            out = x + self.sigma * randn()
        elif self.kind == "rician":
            out = torch.hypot(x + self.sigma * randn(), self.sigma * randn())
        else:
            rate = (x.clamp_min(0) * self.peak).double()
            out = (torch.poisson(rate, generator=generator) / self.peak).to(x.dtype)
        if self.salt_pepper > 0:
            u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            out = torch.where(u < self.salt_pepper / 2, torch.zeros_like(out), out)
            out = torch.where((u >= self.salt_pepper / 2) & (u < self.salt_pepper), torch.ones_like(out), out)
        return out


def median3(x: torch.Tensor) -> torch.Tensor:
    """3x3 (2D) or 3x3x3 (3D) median filter with edge replication, (B, C, *spatial)."""
    nd = len(_spatial(x))
    pad = F.pad(x, (1, 1) * nd, mode="replicate")
    patches = pad
    for axis in range(nd):
        patches = patches.unfold(2 + axis, 3, 1)
    return patches.reshape(*x.shape, -1).median(dim=-1).values


# chosen on the MNI152 tuning slice (Gaussian 0.1 + 5% impulses, the denoising bundle's network: 31.80 dB at 0.05 and
# at 0.1, 31.73 at 0.25, 31.42 without the switch)
IMPULSE_THRESHOLD = 0.1


def switching_median(
    x: torch.Tensor, impulse_values: Sequence[float] = (0.0, 1.0), threshold: float = IMPULSE_THRESHOLD
) -> torch.Tensor:
    """Replace impulse voxels of ``x`` (B, C, *spatial) by their 3x3 (3x3x3) median, leaving every other voxel as
    it is (a decision-based, "switching" median filter).

    A voxel is an impulse when it holds exactly one of ``impulse_values`` (salt-and-pepper drives voxels to the
    ends of the intensity range: dead and hot detector pixels, saturated samples) and differs from its median by
    more than ``threshold`` (intensity units), so a flat region at the range's end (air at the minimum) stays.
    Gaussian, Rician and Poisson noise are left to the denoiser: they almost never hit these exact values.
    """
    if not (math.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}.")
    values = [float(v) for v in impulse_values]
    if not values:
        return x
    med = median3(x)
    at_end = torch.zeros_like(x, dtype=torch.bool)
    for v in values:
        at_end |= x == v
    return torch.where(at_end & ((x - med).abs() > threshold), med, x)


def estimate_noise_sigma(x: torch.Tensor) -> torch.Tensor:
    """Gaussian noise level (B,) of noisy images (B, 1, H, W) from the median absolute value of the finest
    diagonal Haar detail (Donoho's MAD estimate), robust to edges and to a few impulses; volumes use their
    last two axes."""
    if x.ndim == 5:
        x = x.movedim(2, 1).flatten(0, 1)[:, :1] if x.shape[1] == 1 else x[:, :1, 0]
    h, w = (x.shape[-2] // 2) * 2, (x.shape[-1] // 2) * 2
    if h < 2 or w < 2:
        return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    v = x[..., :h, :w]
    d = (v[..., 0::2, 0::2] - v[..., 0::2, 1::2] - v[..., 1::2, 0::2] + v[..., 1::2, 1::2]) / 2
    return d.abs().flatten(1).median(dim=1).values / 0.6745


# ---------------------------------------------------------------------------------------------
# inpainting
# ---------------------------------------------------------------------------------------------
def _laplacian_kernel(nd: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    kernel = torch.zeros((1, 1) + (3,) * nd, dtype=dtype, device=device)
    centre = (0, 0) + (1,) * nd
    kernel[centre] = -2.0 * nd
    for axis in range(nd):
        for off in (0, 2):
            idx = list(centre)
            idx[2 + axis] = off
            kernel[tuple(idx)] = 1.0
    return kernel


def fill_holes(x: torch.Tensor, mask: torch.Tensor, smoothing: int = 20) -> torch.Tensor:
    """A smooth membrane fill of the holes (``mask`` 1 = missing) of ``x`` (B, C, *spatial): known voxels are
    pulled down a mask-weighted average pyramid, the coarsest estimate pushed back up, and the holes relaxed
    by ``smoothing`` Jacobi iterations of Laplace's equation at full resolution.  Known voxels are unchanged."""
    nd = len(_spatial(x))
    known = (mask < 0.5).to(x.dtype)
    pool = F.avg_pool2d if nd == 2 else F.avg_pool3d
    levels = [(x * known, known)]
    while min(levels[-1][1].shape[2:]) > 1 and bool((levels[-1][1] == 0).any()):
        v, k = levels[-1]
        kernel = [2 if s > 1 else 1 for s in v.shape[2:]]
        levels.append(
            (pool(v, kernel, ceil_mode=True) * math.prod(kernel), pool(k, kernel, ceil_mode=True) * math.prod(kernel))
        )
    v, k = levels[-1]
    est = v / k.clamp_min(1e-6)
    if bool((k == 0).any()):  # nothing known at all at the coarsest level
        est = torch.where(
            k > 0,
            est,
            (v.flatten(1).sum(1) / k.flatten(1).sum(1).clamp_min(1e-6)).reshape(-1, *[1] * (v.ndim - 1)).expand_as(v),
        )
    mode = "bilinear" if nd == 2 else "trilinear"
    for v, k in reversed(levels[:-1]):
        up = F.interpolate(est, size=v.shape[2:], mode=mode, align_corners=False)
        mean = v / k.clamp_min(1e-6)
        est = torch.where(k > 0, mean, up)
    out = torch.where(known > 0, x, est)
    kernel = _laplacian_kernel(nd, x.dtype, x.device)
    kernel[(0, 0) + (1,) * nd] = 0.0
    kernel /= 2 * nd  # the mean of the 2 nd face neighbours
    conv = F.conv2d if nd == 2 else F.conv3d
    hole = known < 1
    for _ in range(int(smoothing)):
        flat = out.flatten(0, 1).unsqueeze(1)
        avg = conv(F.pad(flat, (1, 1) * nd, mode="replicate"), kernel).reshape(out.shape)
        out = torch.where(hole, avg, out)
    return out


def _biharmonic_level(x: torch.Tensor, hole: torch.Tensor, init: torch.Tensor, iterations: int) -> torch.Tensor:
    """Conjugate gradients on ``min ||L u||^2`` over the hole voxels (``L``: the Laplacian with replicated
    borders, so every voxel takes part), ``u = x`` on known voxels, starting from ``init`` in the holes.

    Only the holes' bounding box and a margin of 3 voxels enter (the Laplacians that involve a hole voxel reach 2
    voxels beyond it): the same solution as on the whole image, at a fraction of the cost for a compact hole."""
    nd = x.ndim - 2
    occupied = hole.amax(dim=(0, 1)) > 0  # any hole at this position, over the batch and channels
    box = []
    for axis in range(nd):
        present = torch.nonzero(occupied.amax(dim=tuple(a for a in range(nd) if a != axis))).flatten()
        box.append(slice(max(int(present.min()) - 3, 0), min(int(present.max()) + 4, x.shape[2 + axis])))
    if all(b.stop - b.start == n for b, n in zip(box, x.shape[2:])):
        return _thin_plate_cg(x, hole, init, iterations)
    inner = (slice(None), slice(None), *box)
    out = x.clone()
    out[inner] = _thin_plate_cg(x[inner], hole[inner], init[inner], iterations)
    return out


def _thin_plate_cg(x: torch.Tensor, hole: torch.Tensor, init: torch.Tensor, iterations: int) -> torch.Tensor:
    nd = x.ndim - 2
    conv, conv_t = (F.conv2d, F.conv_transpose2d) if nd == 2 else (F.conv3d, F.conv_transpose3d)
    kernel = _laplacian_kernel(nd, x.dtype, x.device)
    shape = x.shape

    def normal(v: torch.Tensor) -> torch.Tensor:  # L^T L v
        lap = conv(F.pad(v.reshape(-1, 1, *shape[2:]), (1, 1) * nd, mode="replicate"), kernel)
        back = conv_t(lap, kernel)  # the adjoint of the convolution, on the padded grid
        for axis in range(2, 2 + nd):  # the adjoint of replicate padding: fold each border layer onto the edge
            n = back.shape[axis]
            edges = back.index_select(axis, torch.tensor([0, n - 1], device=back.device))
            back = back.narrow(axis, 1, n - 2).clone()
            back.narrow(axis, 0, 1).add_(edges.narrow(axis, 0, 1))
            back.narrow(axis, n - 3, 1).add_(edges.narrow(axis, 1, 1))
        return back.reshape(shape)

    dims = tuple(range(2, x.ndim))
    u0 = torch.where(hole > 0, init, x)
    r = -hole * normal(u0)
    p, v = r, torch.zeros_like(x)
    rs = (r * r).sum(dims, keepdim=True)
    for _ in range(int(iterations)):
        ap = hole * normal(hole * p)
        alpha = rs / (p * ap).sum(dims, keepdim=True).clamp_min(1e-30)
        v = v + alpha * p
        r = r - alpha * ap
        rs_new = (r * r).sum(dims, keepdim=True)
        p = r + rs_new / rs.clamp_min(1e-30) * p
        rs = rs_new
    return u0 + hole * v


def biharmonic_fill(x: torch.Tensor, mask: torch.Tensor, iterations: int = 100, min_size: int = 8) -> torch.Tensor:
    """A biharmonic (thin-plate) fill of the holes (``mask`` 1 = missing) of ``x`` (B, C, *spatial), 2D or 3D: the
    holes tend to the minimiser of the squared Laplacian, smoother than :func:`fill_holes`' membrane (gradients
    continue across the hole's border).  Coarse to fine: each level takes ``iterations`` conjugate-gradient steps
    from the coarser level's solution (levels halve until ``min_size``); small holes converge, large or thin
    winding ones stop at a smooth approximation, the same for the same input (the models see this function's
    output in training and inference alike).  Known voxels are unchanged; the result is not clipped (a thin
    plate can overshoot the known range)."""
    spatial = _spatial(x)
    hole = (mask.to(x) > 0.5).to(x.dtype).expand_as(x)
    known = 1 - hole
    if not bool(hole.any()):
        return x.clone()
    if min(spatial) >= 2 * min_size:
        pool = F.avg_pool2d if len(spatial) == 2 else F.avg_pool3d
        known_c = pool(known, 2, ceil_mode=True)
        x_c = pool(x * known, 2, ceil_mode=True) / known_c.clamp_min(1e-6)
        hole_c = (known_c < 0.999).to(x.dtype)  # a coarse voxel is known only where all its children are
        coarse = biharmonic_fill(x_c * (1 - hole_c), hole_c, iterations, min_size)
        init = F.interpolate(coarse, size=spatial, mode="bilinear" if len(spatial) == 2 else "trilinear")
    else:
        dims = tuple(range(2, x.ndim))
        init = ((x * known).sum(dims, keepdim=True) / known.sum(dims, keepdim=True).clamp_min(1)).expand_as(x)
    return _biharmonic_level(x, hole, init, iterations)


class Inpainting:
    """Masked acquisition: ``mask`` (B or 1, 1, *spatial), 1 = missing; known voxels are kept exactly."""

    def __init__(self, mask: torch.Tensor):
        m = torch.as_tensor(mask)
        if not bool(((m == 0) | (m == 1)).all()):
            raise ValueError("mask must hold only 0 (known) and 1 (missing).")
        self.mask = m

    def degrade(self, x: torch.Tensor) -> torch.Tensor:
        return x * (1 - self.mask.to(x))

    def base(self, y: torch.Tensor) -> torch.Tensor:
        return fill_holes(y, self.mask.to(y).expand_as(y))

    def project(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        m = self.mask.to(x).expand_as(x) > 0.5
        return torch.where(m, x, y.to(x))


# ---------------------------------------------------------------------------------------------
# intensities
# ---------------------------------------------------------------------------------------------
class RobustIntensity:
    """Map an image in any units (CT in HU, 12/16-bit radiographs, arbitrary MR scale) onto the [0, 1] range the
    models trained on, and back.

    ``low`` and ``high`` are the ``low_percentile`` and ``high_percentile`` of the image after a 3x3 median
    filter, so salt-and-pepper impulses and Gaussian noise hardly move them (a plain percentile of a noisy image
    is inflated by the noise).  ``forward`` is ``(v - low) / (high - low)``, ``inverse`` its exact inverse; values
    outside [low, high] are not clipped (the caller decides).

    Args:
        low_percentile, high_percentile: percentiles of the filtered image mapped to 0 and 1.
    """

    def __init__(self, low_percentile: float = 0.5, high_percentile: float = 99.5):
        if not 0 <= low_percentile < high_percentile <= 100:
            raise ValueError(
                f"need 0 <= low_percentile < high_percentile <= 100, got {low_percentile!r}, {high_percentile!r}."
            )
        self.low_percentile, self.high_percentile = float(low_percentile), float(high_percentile)
        self.low, self.high = 0.0, 1.0

    def fit(self, image: torch.Tensor) -> RobustIntensity:
        """Measure ``low`` / ``high`` on ``image`` (C, *spatial) or (B, C, *spatial)."""
        x = torch.as_tensor(image).float()
        while x.ndim < 4:
            x = x[None]
        if x.ndim == 5:  # a volume: filter its slices in 2D (cheap, and robust to thick slices)
            x = x.movedim(-1, 1).flatten(0, 1).unsqueeze(1)
        v = median3(x).flatten()
        if v.numel() > 2_000_000:
            v = v[torch.linspace(0, v.numel() - 1, 2_000_000).long()]
        lo, hi = torch.quantile(
            v.double(), torch.tensor([self.low_percentile / 100, self.high_percentile / 100], dtype=torch.float64)
        ).tolist()
        if not hi > lo:
            lo, hi = float(v.min()), float(v.max())
        if not hi > lo:
            raise ValueError("image is constant: it has no intensity range to restore.")
        self.low, self.high = float(lo), float(hi)
        return self

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return (image - self.low) / (self.high - self.low)

    def inverse(self, image: torch.Tensor) -> torch.Tensor:
        return image * (self.high - self.low) + self.low
