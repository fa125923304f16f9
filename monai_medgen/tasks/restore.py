"""Restore a user's 2D image or volume with a residual restoration model, in the input's units and geometry.

A 2D model handles every case:

- 2D images: directly; images larger than ``tile_above`` pixels on a side go through overlapping tiles
  (seamless Gaussian blending at every step), so a 2000 x 2000 radiograph needs well under 4 GB;
- volumes, in-plane work (denoising, inpainting, in-plane super-resolution): slice by slice along the third axis;
- volumes with thick slices (``factor = (1, 1, f)``): the planes that contain the slice axis are restored (both
  stacks, through the first and through the second axis) and averaged, then the average is projected onto the
  measured slices, so the result, averaged back over each thick slice, equals the input.

Intensities: :class:`~monai_medgen.tasks.RobustIntensity` maps the input onto the model's [0, 1] range (robust to
noise and impulses), the output is mapped back into the input's units (denoising and inpainting clipped to the
input's value range, super-resolution only to its sign and its integer type's range).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from tqdm.auto import tqdm

from monai_medgen.inferers.conditional import ConditionalDiffusionInferer
from monai_medgen.tasks.operators import RobustIntensity, SuperResolution
from monai_medgen.tasks.sampling import ResidualRestorer

__all__ = ["ResidualDiffusionInferer", "VolumeProgress", "fine_grid_affine", "restore_residual"]

MAX_PIXELS_PER_BATCH = 4 * 256 * 256


class ResidualDiffusionInferer(ConditionalDiffusionInferer):
    """A :class:`ConditionalDiffusionInferer` whose network generates the residual to a classical estimate
    (:mod:`monai_medgen.tasks.blind`); it carries the family and the default sampler settings, so
    :func:`monai_medgen.restoration.restore_image` (command line, MONAI Label, bundles) restores with
    :func:`restore_residual`.

    Args:
        family: ``"sr"``, ``"denoise"`` or ``"inpaint"``.
        start_time: noise level after the first sampler step (:class:`~monai_medgen.tasks.ResidualRestorer`).
        tile_size: tile side for images larger than ``tile_above`` pixels on a side.
        tile_above: image side above which tiles are used.
        data_dims: what the bundle restores: 2 (images; volumes slice by slice) or 3 (volumes, e.g. thick slices
            through their planes), whatever the network's own ``spatial_dims``.
        self_ensemble: draw the samples of a multi-sample restoration in flipped / transposed frames and map them
            back before averaging (:class:`~monai_medgen.tasks.ResidualRestorer`); one sample is unchanged.
        adapt_steps: denoising: steps of test-time adaptation of the network to the input, by its Stein's unbiased
            risk estimate (:func:`~monai_medgen.tasks.adaptation.sure_adapt`; once per input, on random crops of all
            its slices); 0: off.
        adapt_lr: the adaptation's learning rate.
        Other arguments: as :class:`ConditionalDiffusionInferer`.
    """

    def __init__(
        self,
        family: str = "sr",
        start_time: float = 0.5,
        tile_size: int = 256,
        tile_above: int = 512,
        data_dims: int = 2,
        self_ensemble: bool = False,
        adapt_steps: int = 0,
        adapt_lr: float = 3e-3,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(adapt_steps, bool) or not isinstance(adapt_steps, int) or adapt_steps < 0:
            raise ValueError(f"adapt_steps must be an integer >= 0, got {adapt_steps!r}.")
        if adapt_steps and family != "denoise":
            raise ValueError(f"adapt_steps (SURE adaptation) applies to denoising only, got family={family!r}.")
        if not (isinstance(adapt_lr, (int, float)) and math.isfinite(adapt_lr) and adapt_lr > 0):
            raise ValueError(f"adapt_lr must be a positive number, got {adapt_lr!r}.")
        self.adapt_steps, self.adapt_lr = int(adapt_steps), float(adapt_lr)
        if data_dims not in (2, 3):
            raise ValueError(f"data_dims must be 2 or 3, got {data_dims!r}.")
        self.data_dims = int(data_dims)
        self.family, self.start_time = family, float(start_time)
        self.tile_size, self.tile_above = int(tile_size), int(tile_above)
        self.self_ensemble = bool(self_ensemble)


def fine_grid_affine(affine, shape: Sequence[int], size: Sequence[int]) -> torch.Tensor:
    """The affine of a grid of ``size`` voxels covering the same field of view as ``shape`` voxels with ``affine``
    (voxel corners kept in place)."""
    affine = torch.as_tensor(np.asarray(affine), dtype=torch.float64)
    nd = len(shape)
    scale = torch.tensor([n / m for n, m in zip(shape, size)], dtype=torch.float64)
    to_coarse = torch.eye(affine.shape[-1], dtype=torch.float64)
    to_coarse[range(nd), range(nd)] = scale
    to_coarse[:nd, -1] = (scale - 1) / 2
    return affine @ to_coarse


def _factors(factor, ndim: int) -> list[float]:
    if np.isscalar(factor):
        f = [float(factor)] * 2 + [1.0] * (ndim - 2)
    else:
        f = [float(v) for v in factor]
    if len(f) != ndim or not all(math.isfinite(v) and v >= 1 for v in f):
        raise ValueError(
            f"factor must be a number >= 1 (in-plane) or one per spatial axis of a {ndim}D image, got {factor!r}."
        )
    return f


class VolumeProgress:
    """Progress over a whole image or volume: one tqdm bar counting slices done out of ``total`` (shown when
    ``verbose`` and the work has more than one slice), and ``callback(done, total)`` after every batch.

    Args:
        total: slices (or planes) the whole restoration samples.
        verbose: show the bar.
        callback: called with ``(done, total)`` after every batch of slices (e.g. a GUI's progress bar).
        desc: the bar's label.

    Use as a context manager; :meth:`update` adds the slices of a finished batch.
    """

    def __init__(
        self,
        total: int,
        verbose: bool = False,
        callback: Callable[[int, int], None] | None = None,
        desc: str = "volume",
    ):
        if callback is not None and not callable(callback):
            raise ValueError(f"progress must be a callable (done, total), got {type(callback).__name__}.")
        self.total, self.done, self.callback = int(total), 0, callback
        self.bar = tqdm(total=self.total, disable=not verbose or self.total < 2, desc=desc, unit="slice")

    def update(self, n: int) -> None:
        self.done += int(n)
        self.bar.update(int(n))
        if self.callback is not None:
            self.callback(self.done, self.total)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> VolumeProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _run_slices(restorer, measured, project_fn, mask, num_samples, seed, progress, value_range=None):
    """Restore (S, 1, H, W) slices in batches; slice k draws from seed + k (results independent of batching);
    ``progress`` (:class:`VolumeProgress`) counts the slices done."""
    s, _, h, w = measured.shape
    step = max(1, MAX_PIXELS_PER_BATCH // (h * w))
    means, stds = [], []
    for start in range(0, s, step):
        idx = slice(start, min(s, start + step))
        gens = [torch.Generator(device=measured.device).manual_seed(int(seed) + k) for k in range(idx.start, idx.stop)]
        project = None if project_fn is None else (lambda x, i=idx: project_fn(x, i))
        m = None if mask is None else mask[idx]
        mean, std = restorer(
            measured[idx], project=project, mask=m, num_samples=num_samples, generator=gens, value_range=value_range
        )
        means.append(mean)
        stds.append(std)
        progress.update(idx.stop - idx.start)
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def restore_residual(
    network,
    inferer: ResidualDiffusionInferer,
    image,
    mask=None,
    factor: float | Sequence[float] = 1.0,
    num_steps: int | None = None,
    num_samples: int = 1,
    seed: int = 0,
    sampler: str = "dpm++",
    device=None,
    verbose: bool = False,
    planes: str = "both",
    speed: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
    adapt_steps: int | None = None,
) -> tuple[MetaTensor, MetaTensor | None]:
    """Restore ``image`` (1, H, W) or (1, H, W, D) ``MetaTensor`` in any units; returns ``(restored, std or None)``
    on the output grid (the input's, or the finer one for super-resolution) with its affine, in the input's units.

    Args:
        mask: inpainting, the image's shape, > 0 = missing.
        factor: super-resolution: a number (in-plane, the first two axes) or one per axis; for a volume, either
            in-plane factors or one factor along the third axis (thick slices).
        num_steps: network calls per sample (default 4).
        planes: thick-slice super-resolution: ``"both"`` plane stacks averaged, or ``"one"`` (half the time).
        speed: ``channels_last`` / ``autocast`` / ``compile`` options of the network call.
        verbose: one progress bar over the whole volume (slices done / total; thick slices: the planes of both
            stacks).
        progress: ``progress(done, total)`` after every batch of slices, the same count as the bar.
        adapt_steps: denoising: steps of test-time adaptation to the input (once, on crops of all its slices;
            :func:`~monai_medgen.tasks.adaptation.sure_adapt`); None: the inferer's ``adapt_steps``; 0: off.
    """
    family = inferer.family
    img = image if isinstance(image, MetaTensor) else MetaTensor(torch.as_tensor(image))
    x = img.as_tensor().float()
    if x.ndim not in (3, 4) or x.shape[0] != 1:
        raise ValueError(f"image must be (1, H, W) or (1, H, W, D), got shape {tuple(x.shape)}.")
    if planes not in ("both", "one"):
        raise ValueError(f"planes must be 'both' or 'one', got {planes!r}.")
    dev = torch.device(device) if device is not None else next(network.parameters()).device
    spatial = tuple(x.shape[1:])
    f = _factors(factor, len(spatial))
    if family != "sr" and any(v != 1 for v in f):
        raise ValueError(f"factor applies to super-resolution only, got factor={factor!r} for {family!r}.")
    lo_in, hi_in = float(x.min()), float(x.max())
    scaler = RobustIntensity().fit(x)
    y = scaler.forward(x).to(dev)  # (1, *spatial), not clipped: data consistency uses the measurement as it is
    tile = inferer.tile_size if max(spatial[:2]) > inferer.tile_above else None
    restorer = ResidualRestorer(
        inferer,
        network,
        family,
        num_steps=int(num_steps or 4),
        start_time=inferer.start_time,
        sampler=sampler,
        patch_size=tile,
        speed=speed,
        # salt-and-pepper sits at the ends of what was measured (dead and hot pixels, saturation)
        impulse_values=(float(y.min()), float(y.max())),
        adapt_steps=adapt_steps,
    )
    network.eval()
    m = None
    if mask is not None:
        mt = torch.as_tensor(mask.as_tensor() if isinstance(mask, MetaTensor) else np.asarray(mask)).float()
        m = (mt.reshape(x.shape) > 0).float().to(dev)
    size = tuple(int(round(n * v)) for n, v in zip(spatial, f))
    # magnitudes stay non-negative (and, for SR, consistent with the measurement: alternating projections)
    value_range = (float(scaler.forward(torch.tensor(0.0))), None) if lo_in >= 0 else None
    thick = len(spatial) == 3 and f[2] != 1
    if thick and (f[0] != 1 or f[1] != 1):
        raise ValueError(f"a volume takes in-plane factors or a factor along its third axis, not both; got {factor!r}.")
    if restorer.adapt_steps:  # once per input, on crops of all its slices (then every batch of slices uses it)
        restorer = restorer.adapted(y.permute(3, 0, 1, 2) if y.ndim == 4 else y[None], value_range, seed=seed)
    if thick:  # planes through the slice axis: W of them at fixed W, then H at fixed H
        total = spatial[1] + (spatial[0] if planes == "both" else 0)
    else:
        total = spatial[2] if len(spatial) == 3 else 1
    with VolumeProgress(total, verbose, progress, desc=f"restore ({family})") as bar:
        if thick:
            mean, std = _thick_slices(restorer, y, f[2], size, num_samples, seed, bar, planes, value_range)
        else:
            mean, std = _in_plane(restorer, y, m, f[:2], size, num_samples, seed, bar, value_range)
    if m is not None:  # known voxels exactly as given (in the input's units below)
        mean = torch.where(m > 0, mean, y)
    out = scaler.inverse(mean.cpu())
    if family == "sr":  # finer detail may leave the coarse image's range; only the sign of the units is kept
        out = out.clamp_min(0.0) if lo_in >= 0 else out
    else:  # denoising and inpainting stay within the range of what was measured
        out = out.clamp(lo_in, hi_in)
    if not torch.is_floating_point(img) and hasattr(img, "dtype"):
        info = torch.iinfo(img.dtype)
        out = out.clamp(info.min, info.max)
    if m is not None:
        out = torch.where(m.cpu() > 0, out, x)
    affine = (
        fine_grid_affine(img.affine, spatial, size)
        if size != spatial
        else torch.as_tensor(np.asarray(img.affine), dtype=torch.float64)
    )
    meta = {k: v for k, v in img.meta.items() if k != "affine"}
    restored = MetaTensor(out, affine=affine, meta=meta)
    unc = (
        None
        if num_samples < 2
        else MetaTensor(std.cpu() * (scaler.high - scaler.low), affine=affine.clone(), meta=dict(meta))
    )
    return restored, unc


def _in_plane(restorer, y, m, f2, size, num_samples, seed, progress, value_range=None):
    """2D images, or volumes slice by slice along the third axis."""
    volume = y.ndim == 4
    slices = y.permute(3, 0, 1, 2) if volume else y[None]  # (S, 1, H, W)
    masks = None if m is None else (m.permute(3, 0, 1, 2) if volume else m[None])
    project_fn = None
    if any(v != 1 for v in f2):
        op = SuperResolution(tuple(f2))
        low = slices
        measured = op.base(low, size[:2]).clamp(-0.5, 1.5)

        def project_fn(x, idx):
            return op.project(x, low[idx])

    else:
        measured = slices
    mean, std = _run_slices(restorer, measured, project_fn, masks, num_samples, seed, progress, value_range)
    if volume:
        return mean.permute(1, 2, 3, 0), std.permute(1, 2, 3, 0)
    return mean[0], std[0]


def _thick_slices(restorer, y, f, size, num_samples, seed, progress, planes, value_range=None):
    """Volumes with thick slices: restore the planes through the slice axis, average, project in 3D."""
    op2 = SuperResolution((1.0, f))
    estimates, spreads = [], []
    for axis in (1, 0)[: 2 if planes == "both" else 1]:  # planes at fixed W (H x D images), then fixed H (W x D)
        stack = y[0].movedim(axis, 0)[:, None]  # (N, 1, other in-plane axis, D)
        measured = op2.base(stack, (stack.shape[2], size[2])).clamp(-0.5, 1.5)

        def project_fn(x, idx, stack=stack):
            return op2.project(x, stack[idx])

        mean, std = _run_slices(
            restorer, measured, project_fn, None, num_samples, seed + 7919 * axis, progress, value_range
        )
        estimates.append(mean[:, 0].movedim(0, axis))
        spreads.append(std[:, 0].movedim(0, axis))
    avg = torch.stack(estimates).mean(0)[None, None]  # (1, 1, H, W, D')
    op3 = SuperResolution((1.0, 1.0, f))
    avg = op3.project(avg, y[None])
    if value_range is not None:  # alternate with the range constraint (both hold for the truth)
        for _ in range(20):
            avg = op3.project(avg.clamp(*value_range), y[None])
    return avg[0], torch.stack(spreads).mean(0)[None]
