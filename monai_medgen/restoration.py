"""The Med-cDiff restoration tasks: degradations for training, fixed test sets, metrics and restoration.

Three tasks on brain slices (and volumes) with intensities in [0, 1]:

- ``"sr"``: super-resolution by ``factor`` (default 4): area downsampling, the condition is the low-resolution
  image interpolated back onto the original grid (:class:`~monai_medgen.transforms.SimulateLowResolution`);
- ``"denoise"``: Gaussian noise of sigma 0.1 plus 5% salt-and-pepper (:class:`~monai_medgen.transforms.RandMixedNoise`);
- ``"inpaint"``: random boxes in training, a central 32x32 hole for testing; the model is mask-conditioned
  (condition = masked image in [-1, 1] and the 0/1 mask as a second channel).

The network's image and condition live in [-1, 1] (``x * 2 - 1``).  Everything here is shared by the bundles'
configs, ``scripts/evaluate_conditional.py``, the command line and the MONAI Label app, so a model is trained,
validated and used with exactly the same degradation.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.transforms import (
    Compose,
    ConcatItemsd,
    EnsureTyped,
    RandFlipd,
    RandSpatialCropd,
    RandWeightedCropd,
    ScaleIntensityRanged,
)

from monai_medgen import io
from monai_medgen.bundle import prepare_items
from monai_medgen.data import demo_slices, load_colin27, scale_intensity
from monai_medgen.limits import RESTORATION_TASKS
from monai_medgen.metrics import data_consistency, masked_psnr, psnr, relative_sharpness, ssim
from monai_medgen.networks import size_multiple
from monai_medgen.tasks.restore import ResidualDiffusionInferer, VolumeProgress, restore_residual
from monai_medgen.transforms import (
    RandInpaintingMask,
    RandInpaintingMaskd,
    RandMixedNoise,
    RandMixedNoised,
    SimulateLowResolution,
    SimulateLowResolutiond,
)

__all__ = [
    "TASKS",
    "check_image",
    "check_mask",
    "classical_baselines",
    "cond_channels",
    "data_dims",
    "make_test_set",
    "restoration_sample_fn",
    "RestorationInferer",
    "restore_file",
    "restore_image",
    "restore_slices",
    "score",
    "TestSet",
    "training_transforms",
    "validation_items",
]

logger = logging.getLogger(__name__)

TASKS = RESTORATION_TASKS
SR_FACTOR = 4.0
NOISE_SIGMA, SALT_PEPPER = 0.1, 0.05
HOLE = 32  # side of the central test hole at 128x128
TRAIN_HOLE_AREA = (24**2, 44**2)  # pixels covered by the random training boxes (the test hole: 32^2)
TV_WEIGHTS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5)
NLM_H = (0.08, 0.1, 0.12, 0.15, 0.18, 0.2, 0.25, 0.3)
# the sampler's own generator (noise of the 2nd..Nth sample, ancestral noise) must not replay the seeds that drew
# the first sample's starting noise, or sample 2 would start where sample 1 did
SAMPLER_SEED_OFFSET = 1_000_003


def _check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}.")
    return task


def cond_channels(task: str) -> int:
    """Channels of the model's condition: the degraded image, plus the mask for inpainting."""
    return 2 if _check_task(task) == "inpaint" else 1


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
def training_transforms(
    task: str,
    crop_size: int | None = 64,
    image_size: int = 128,
    factor: float = SR_FACTOR,
    sigma: float = NOISE_SIGMA,
    salt_pepper: float = SALT_PEPPER,
    flip: bool = True,
    spatial_dims: int = 2,
    num_crops: int = 1,
):
    """MONAI chain for ``{"image": (1, H, W) in [0, 1]}`` items: random crop and flip, the task's random
    degradation written to ``"cond"`` (``"image"`` is never changed by it), then image and condition scaled to
    [-1, 1]; for inpainting the 0/1 ``"mask"`` is appended to the condition as a second channel.

    The degradations are defined on [0, 1] intensities (sigma 0.1, salt 1, pepper 0), so they come before
    the scaling.  ``crop_size`` None: whole images.  For volumes (``spatial_dims=3``) ``num_crops`` cubes of
    ``crop_size`` are drawn per volume with probability proportional to intensity (``RandWeightedCropd``), so
    they fall on the brain rather than the background; ``factor`` may then be one value per axis (e.g.
    ``(1, 1, 4)``: 4 mm slices to 1 mm).
    """

    _check_task(task)

    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    chain = [EnsureTyped(keys="image", track_meta=False)]
    if crop_size and spatial_dims == 3:
        chain.append(
            RandWeightedCropd("image", w_key="image", spatial_size=(int(crop_size),) * 3, num_samples=int(num_crops))
        )
    elif crop_size:
        chain.append(RandSpatialCropd("image", roi_size=int(crop_size), random_size=False))
    if flip:
        chain.append(RandFlipd("image", prob=0.5, spatial_axis=0))
    if task == "sr":
        chain.append(SimulateLowResolutiond("image", factor=factor, cond_key="cond"))
    elif task == "denoise":
        chain.append(RandMixedNoised("image", sigma=sigma, salt_pepper=salt_pepper, low=0.0, high=1.0, cond_key="cond"))
    else:
        area = float((crop_size or image_size) ** 2)
        chain.append(
            RandInpaintingMaskd(
                "image",
                mask_type="box",
                min_fraction=min(TRAIN_HOLE_AREA[0] / area, 0.5),
                max_fraction=min(TRAIN_HOLE_AREA[1] / area, 0.5),
                num_boxes=(1, 2),
                cond_key="cond",
                mask_key="mask",
            )
        )
    chain.append(ScaleIntensityRanged(["image", "cond"], 0.0, 1.0, -1.0, 1.0))
    if task == "inpaint":
        chain.append(ConcatItemsd(["cond", "mask"], name="cond"))
    return Compose(chain)


# ---------------------------------------------------------------------------------------------
# fixed test sets
# ---------------------------------------------------------------------------------------------
@dataclass
class TestSet:
    """Fixed degradations of clean slices, everything (N, C, H, W) on the CPU.

    Attributes:
        truth: clean slices in [0, 1].
        shown: the degraded input as measured, on the truth's grid (nearest-neighbour upsampling for SR).
        cond: the model's condition in [-1, 1] (plus the 0/1 mask channel for inpainting).
        measurement: what data consistency compares with: the low-resolution image (SR), the noisy image
            (denoising), the masked image (inpainting).
        degrade_fn: the forward model with the test set's parameters (None for inpainting: the known region is
            compared as it is).
        mask: (N, 1, H, W) hole, 1 = missing (inpainting only).
    """

    __test__ = False  # not a pytest class

    truth: torch.Tensor
    shown: torch.Tensor
    cond: torch.Tensor
    measurement: torch.Tensor
    degrade_fn: Callable[[torch.Tensor], torch.Tensor] | None
    mask: torch.Tensor | None = None

    def first(self, n: int) -> TestSet:
        """The first ``n`` slices (their noise seeds and masks unchanged)."""
        return TestSet(
            self.truth[:n],
            self.shown[:n],
            self.cond[:n],
            self.measurement[:n],
            self.degrade_fn,
            None if self.mask is None else self.mask[:n],
        )

    def known(self) -> torch.Tensor | None:
        """The known image in [-1, 1] for the sampler (inpainting only)."""
        return None if self.mask is None else self.shown * 2 - 1


def make_test_set(
    task: str, truth: torch.Tensor, seed: int = 1000, factor: float = SR_FACTOR, hole: int = HOLE
) -> TestSet:
    """Degrade ``truth`` (N, 1, H, W) in [0, 1] with fixed parameters: slice ``i`` gets noise seed ``seed + i``;
    inpainting uses a central ``hole`` x ``hole`` box."""

    _check_task(task)
    truth = torch.as_tensor(truth, dtype=torch.float32)
    if truth.ndim not in (4, 5) or truth.shape[1] != 1:
        raise ValueError(f"truth must have shape (N, 1, H, W) or (N, 1, H, W, D), got {tuple(truth.shape)}.")
    if task == "sr":
        sim = SimulateLowResolution(factor)  # area down, bicubic back onto the grid (2D default)

        def downsample(x: torch.Tensor) -> torch.Tensor:
            return torch.stack([torch.as_tensor(sim.downsample(xi)) for xi in x])

        nearest = SimulateLowResolution(factor, upsample_mode="nearest")
        shown = torch.stack([torch.as_tensor(nearest(xi)) for xi in truth])
        bicubic = torch.stack([torch.as_tensor(sim(xi)) for xi in truth])
        return TestSet(truth, shown, bicubic * 2 - 1, downsample(truth), downsample)
    if task == "denoise":

        def add_noise(x: torch.Tensor) -> torch.Tensor:
            return torch.stack(
                [
                    torch.as_tensor(RandMixedNoise(NOISE_SIGMA, SALT_PEPPER, low=0.0, high=1.0, seed=seed + i)(xi))
                    for i, xi in enumerate(x)
                ]
            )

        noisy = add_noise(truth)
        return TestSet(truth, noisy, noisy * 2 - 1, noisy, add_noise)
    box = RandInpaintingMask(center_box=hole, apply_mask=True)
    masked, mask = (torch.stack([torch.as_tensor(p) for p in parts]) for parts in zip(*(box(xi) for xi in truth)))
    return TestSet(truth, masked, torch.cat([masked * 2 - 1, mask], 1), masked, None, mask)


def validation_items(
    task: str,
    num_slices: int = 8,
    size: int = 128,
    seed: int = 1000,
    dataset_dir=None,
    spatial_dims: int = 2,
    crop_size: int = 64,
    factor: float | Sequence[float] = SR_FACTOR,
) -> list[dict]:
    """Held-out items with fixed degradations (Colin27 by default, or the user's ``dataset_dir``) for a
    ``SupervisedEvaluator`` with :class:`RestorationInferer` and MONAI's default batch preparation:
    ``{"image": condition in [-1, 1] (plus the mask channel for inpainting), "label": truth in [-1, 1]}``.

    2D: ``num_slices`` axial slices at ``size``.  3D: the central ``crop_size`` cube of each volume resized to
    ``size`` (the brain box padded to a cube).
    """

    if spatial_dims == 3:
        items = prepare_items(dataset_dir, spatial_dims=3, source="colin27", size=size, keys=("image",))
        cubes = []
        for it in items:
            v = torch.as_tensor(np.asarray(it["image"]), dtype=torch.float32)
            start = [max(0, (n - crop_size) // 2) for n in v.shape[1:]]
            cubes.append(v[(slice(None), *(slice(a, a + crop_size) for a in start))])
        truth = torch.stack(cubes)
    else:
        items = prepare_items(dataset_dir, source="colin27", size=size, num_slices=num_slices, keys=("image",))
        truth = torch.stack([torch.as_tensor(np.asarray(it["image"]), dtype=torch.float32) for it in items])
    test = make_test_set(task, truth, seed=seed, factor=factor)
    return [{"image": c, "label": t * 2 - 1} for t, c in zip(test.truth, test.cond)]


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------
def score(output: torch.Tensor, test: TestSet) -> dict[str, float]:
    """Mean over slices of PSNR, SSIM, sharpness relative to the truth, data consistency (and PSNR in the hole
    for inpainting); ``output`` (N, 1, H, W) in [0, 1]."""

    row = {
        "psnr": psnr(output, test.truth),
        "ssim": ssim(output, test.truth),
        "sharpness": relative_sharpness(output, test.truth),
        "consistency": data_consistency(output, test.measurement, test.degrade_fn, mask=test.mask),
    }
    if test.mask is not None:
        row["hole"] = masked_psnr(output, test.truth, test.mask)
    return {k: float(v.mean()) for k, v in row.items()}


# ---------------------------------------------------------------------------------------------
# classical baselines (scikit-image)
# ---------------------------------------------------------------------------------------------
def _skimage():
    try:
        import skimage.restoration as restoration
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("The classical baselines need scikit-image: pip install 'monai_medgen[demo]'.") from e
    return restoration


def _per_slice(fn: Callable[[np.ndarray], np.ndarray], images: torch.Tensor) -> torch.Tensor:
    out = [fn(img[0].double().numpy()) for img in images]
    return torch.as_tensor(np.stack(out)[:, None], dtype=torch.float32).clamp(0, 1)


def tv_denoise(images: torch.Tensor, weight: float) -> torch.Tensor:
    """Chambolle TV denoising of (N, 1, H, W) slices, clipped to [0, 1]."""
    return _per_slice(lambda a: _skimage().denoise_tv_chambolle(a, weight=weight), images)


def nlm_denoise(images: torch.Tensor, h: float) -> torch.Tensor:
    """Non-local means (5x5 patches, 13x13 search, noise sigma given) of (N, 1, H, W) slices, clipped to [0, 1]."""
    return _per_slice(
        lambda a: _skimage().denoise_nl_means(
            a, h=h, sigma=NOISE_SIGMA, patch_size=5, patch_distance=6, fast_mode=True
        ),
        images,
    )


def biharmonic_inpaint(masked: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Biharmonic inpainting of (N, 1, H, W) slices with their (N, 1, H, W) holes."""
    out = [_skimage().inpaint_biharmonic(m[0].double().numpy(), k[0].numpy() > 0) for m, k in zip(masked, mask)]
    return torch.as_tensor(np.stack(out)[:, None], dtype=torch.float32).clamp(0, 1)


def tune(method: Callable[[torch.Tensor, float], torch.Tensor], grid: Sequence[float], tuning: TestSet) -> float:
    """The grid value with the best mean PSNR on a tuning set (training slices, never the test brain)."""

    scores = [float(psnr(method(tuning.shown, value), tuning.truth).mean()) for value in grid]
    return grid[int(np.argmax(scores))]


def classical_baselines(task: str, test: TestSet, tuning: TestSet | None = None) -> list[tuple[str, torch.Tensor]]:
    """(label, output in [0, 1]) of the classical baselines of ``task``; the first is the reference one
    (bicubic, TV, biharmonic).  Denoising parameters are tuned on ``tuning`` (required for ``"denoise"``)."""
    if _check_task(task) == "sr":
        return [("bicubic", ((test.cond[:, :1] + 1) / 2).clamp(0, 1))]
    if task == "denoise":
        if tuning is None:
            raise ValueError("tuning (a TestSet of training slices) is required to tune the denoising baselines.")
        weight = tune(tv_denoise, TV_WEIGHTS, tuning)
        h = tune(nlm_denoise, NLM_H, tuning)
        return [
            (f"TV (Chambolle, weight {weight:g} tuned on MNI152)", tv_denoise(test.shown, weight)),
            (f"non-local means (h {h:g} tuned on MNI152)", nlm_denoise(test.shown, h)),
        ]
    return [("biharmonic", biharmonic_inpaint(test.shown, test.mask))]


# ---------------------------------------------------------------------------------------------
# restoration with a trained conditional DDPM
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def restore_slices(
    inferer,
    network,
    test: TestSet,
    sampler: str = "dpm++",
    num_steps: int = 20,
    num_samples: int = 8,
    seed: int = 0,
    device=None,
    batch_size: int | None = None,
    **speed,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample the conditional DDPM for each test slice: ``(mean, std)`` in [0, 1] units, (N, 1, H, W).

    Slice ``i`` draws its starting noise from seed ``seed + i`` and its sampler noise from its own generator, so
    results do not depend on the batch size; with ``num_samples`` > 1 the mean and per-pixel standard deviation of
    that many samples, else the sample and zeros.  ``batch_size`` slices share one sampling loop (default: all at
    once).  ``speed``: the sampler's speed options (``channels_last``, ``autocast``, ``compile``).
    """
    device = torch.device(device) if device is not None else next(network.parameters()).device
    n = len(test.truth)
    step = int(batch_size or n)
    means, stds = [], []
    for start in range(0, n, step):
        idx = slice(start, min(n, start + step))
        gens = [torch.Generator(device="cpu").manual_seed(int(seed) + i) for i in range(idx.start, idx.stop)]
        noise = torch.cat([torch.randn((1, *test.truth.shape[1:]), generator=g) for g in gens]).to(device)
        gen = [
            torch.Generator(device=device).manual_seed(int(seed) + i + SAMPLER_SEED_OFFSET)
            for i in range(idx.start, idx.stop)
        ]
        inpaint = {}
        if test.mask is not None:
            inpaint = {"mask": test.mask[idx].to(device), "known": test.known()[idx].to(device)}
        out = inferer.sample(
            noise,
            network,
            sampler=sampler,
            num_steps=int(num_steps),
            condition=test.cond[idx].to(device),
            num_samples=int(num_samples),
            generator=gen,
            verbose=False,
            **inpaint,
            **speed,
        )
        mean, std = out if num_samples > 1 else (out, torch.zeros_like(out))
        means.append(mean.float().cpu() * 0.5 + 0.5)
        stds.append(std.float().cpu() * 0.5)
    mean = torch.cat(means).clamp(0, 1)
    if test.mask is not None:  # the sampler keeps the known region exactly; undo the rounding of the unit change
        mean = torch.where(test.mask.bool(), mean, test.shown)
    return mean, torch.cat(stds)


class RestorationInferer(Inferer):
    """``inferer(condition, network)`` -> a restored image in [-1, 1], for MONAI's ``SupervisedEvaluator``
    (validation PSNR during training) and ``SimpleInferer``-style use.

    It samples the :class:`~monai_medgen.inferers.ConditionalDiffusionInferer` with the condition from a fixed
    seed (so validation scores are comparable between epochs).  For a mask-conditioned inpainting model
    (``task="inpaint"``) the condition's second channel is the 0/1 mask and the first the known image; the
    known region is kept exactly.
    """

    def __init__(self, inferer, task: str = "sr", sampler: str = "dpm++", num_steps: int = 10, seed: int = 0):
        super().__init__()
        self.inferer, self.task = inferer, _check_task(task)
        self.sampler, self.num_steps, self.seed = sampler, int(num_steps), int(seed)

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:  # type: ignore[override]
        cond = torch.as_tensor(inputs)
        g = torch.Generator(device=cond.device).manual_seed(self.seed)
        noise = torch.randn((cond.shape[0], 1, *cond.shape[2:]), generator=g, device=cond.device, dtype=cond.dtype)
        extra = {}
        if self.task == "inpaint":
            extra = {"mask": cond[:, 1:2], "known": cond[:, :1]}
        with torch.no_grad():
            return self.inferer.sample(
                noise,
                network,
                sampler=self.sampler,
                num_steps=self.num_steps,
                condition=cond,
                generator=g,
                verbose=False,
                **extra,
            )


def restoration_sample_fn(
    inferer,
    network,
    items: Sequence[dict],
    task: str = "sr",
    num_steps: int = 20,
    sampler: str = "dpm++",
    seed: int = 0,
    num_frames: int = 20,
) -> Callable:
    """A no-argument callable for :class:`monai_medgen.handlers.SampleGridHandler`: restores the held-out
    ``items`` (``{"image": condition, "label": truth}`` from :func:`validation_items`) from a fixed seed and
    returns ``(grid images, frames)``: per item the input, the restoration and the truth side by side (rows of
    3), and the sampling chain for a GIF."""
    _check_task(task)

    def draw():
        dev = next(network.parameters()).device
        cond = torch.stack([torch.as_tensor(it["image"]) for it in items]).to(dev)
        truth = torch.stack([torch.as_tensor(it["label"]) for it in items]).to(dev)
        g = torch.Generator(device=dev).manual_seed(int(seed))
        noise = torch.randn((cond.shape[0], 1, *cond.shape[2:]), generator=g, device=dev)
        extra = {"mask": cond[:, 1:2], "known": cond[:, :1]} if task == "inpaint" else {}
        with torch.no_grad():
            out, frames = inferer.sample(
                noise,
                network,
                sampler=sampler,
                num_steps=int(num_steps),
                condition=cond,
                generator=g,
                verbose=False,
                save_intermediates=True,
                intermediate_steps=max(1, int(num_steps) // max(1, num_frames)),
                **extra,
            )
        rows = torch.stack([cond[:, :1], out, truth], 1).flatten(0, 1)
        frame_rows = [torch.stack([cond[:, :1], f.to(dev), truth], 1).flatten(0, 1) for f in frames]
        return rows, frame_rows

    return draw


# ---------------------------------------------------------------------------------------------
# restoring user images (bundle inference, command line, MONAI Label)
# ---------------------------------------------------------------------------------------------
def upsample(image: torch.Tensor, factor: float | Sequence[float], mode: str = "bicubic") -> MetaTensor:
    """Interpolate a low-resolution image onto a grid ``factor`` times finer, the affine rescaled so that the
    field of view is unchanged (the corners of the voxel grid stay in place).

    Args:
        image: (C, H, W) or (C, H, W, D), a ``MetaTensor`` (its affine is used) or a tensor (identity).
        factor: one value for the first two axes (in-plane; the third is kept), or one per spatial axis; >= 1.
        mode: ``"bicubic"`` (in-plane only, as a 2D model's condition is made) or ``"trilinear"`` (3D, as a 3D
            model's condition is made).
    """

    img = image if isinstance(image, MetaTensor) else MetaTensor(torch.as_tensor(image))
    shape = tuple(int(s) for s in img.shape[1:])
    if len(shape) not in (2, 3):
        raise ValueError(f"image must be (C, H, W) or (C, H, W, D), got shape {tuple(img.shape)}.")
    factors = [float(factor)] * 2 + [1.0] * (len(shape) - 2) if np.isscalar(factor) else [float(f) for f in factor]
    if len(factors) != len(shape) or not all(math.isfinite(f) and f >= 1 for f in factors):
        raise ValueError(f"factor must be a number >= 1 or one per spatial axis of {shape}, got {factor!r}.")
    size = tuple(round(n * f) for n, f in zip(shape, factors))
    x = img.as_tensor().float()
    if mode == "bicubic":
        if any(f != 1 for f in factors[2:]):
            raise ValueError(f"mode 'bicubic' resamples the first two axes only, got factor {factor!r}.")
        if len(shape) == 2:
            out = F.interpolate(x[None], size=size, mode="bicubic", align_corners=False)[0]
        else:  # the slices along the third axis form the batch
            out = F.interpolate(x.permute(3, 0, 1, 2), size=size[:2], mode="bicubic", align_corners=False)
            out = out.permute(1, 2, 3, 0)
    elif mode == "trilinear":
        if len(shape) != 3:
            raise ValueError(f"mode 'trilinear' needs a volume (C, H, W, D), got shape {tuple(img.shape)}.")
        out = F.interpolate(x[None], size=size, mode="trilinear", align_corners=False)[0]
    else:
        raise ValueError(f"mode must be 'bicubic' or 'trilinear', got {mode!r}.")
    affine = torch.as_tensor(img.affine, dtype=torch.float64)
    nd = len(shape)
    # fine voxel j is centred on coarse voxel (j + 0.5) * n / N - 0.5
    scale = torch.tensor([n / m for n, m in zip(shape, size)], dtype=torch.float64)
    to_coarse = torch.eye(affine.shape[-1], dtype=torch.float64)
    to_coarse[range(nd), range(nd)] = scale
    to_coarse[:nd, -1] = (scale - 1) / 2
    return MetaTensor(out, affine=affine @ to_coarse, meta={k: v for k, v in img.meta.items() if k != "affine"})


def upsample_in_plane(image: torch.Tensor, factor: float) -> MetaTensor:
    """:func:`upsample` of the first two spatial axes by ``factor`` (bicubic), the third axis kept."""
    if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor >= 1):
        raise ValueError(f"factor must be a number >= 1, got {factor!r}.")
    return upsample(image, float(factor), mode="bicubic")


def check_image(image, name: str = "image") -> MetaTensor:
    img = image if isinstance(image, MetaTensor) else MetaTensor(torch.as_tensor(np.asarray(image)))
    if img.ndim not in (3, 4) or img.shape[0] != 1:
        raise ValueError(
            f"{name} must be one channel of a 2D image (1, H, W) or a volume (1, H, W, D) for a 2D model, "
            f"got shape {tuple(img.shape)}."
        )
    if not bool(torch.isfinite(img.as_tensor().float()).all()):
        raise ValueError(f"{name} holds NaN or infinite voxels; it must be finite everywhere.")
    return img


def check_mask(mask, image: MetaTensor, name: str = "mask") -> torch.Tensor:
    if mask is None:
        raise ValueError(f"{name} is required for inpainting: a 0/1 image of the image's shape, 1 = missing.")
    m = torch.as_tensor(mask.as_tensor() if isinstance(mask, MetaTensor) else np.asarray(mask)).float()
    if m.ndim == image.ndim - 1:
        m = m[None]
    if tuple(m.shape[1:]) != tuple(image.shape[1:]) or m.shape[0] != 1:
        raise ValueError(f"{name} must have the image's shape {tuple(image.shape)}, got {tuple(m.shape)}.")
    if isinstance(mask, MetaTensor) and not np.allclose(np.asarray(mask.affine), np.asarray(image.affine), atol=1e-3):
        m_aff, i_aff = np.asarray(mask.affine, dtype=np.float64), np.asarray(image.affine, dtype=np.float64)
        raise ValueError(
            f"{name} must lie on the image's voxel grid, but its affine differs from the image's by up to "
            f"{np.abs(m_aff - i_aff).max():.3g} mm (first voxel at {np.round(m_aff[:-1, -1], 2).tolist()} mm, the "
            f"image's at {np.round(i_aff[:-1, -1], 2).tolist()} mm); resample the mask onto the image's grid."
        )
    m = (m > 0).float()
    if not bool(m.any()):
        raise ValueError(f"{name} is empty: it marks no voxel to inpaint (expected some voxels > 0).")
    if bool(m.all()):
        raise ValueError(f"{name} is full: every voxel is marked missing, so nothing is known to condition on.")
    return m


def data_dims(network, inferer=None) -> int:
    """What a restoration model takes: 2 (images, volumes slice by slice) or 3 (whole volumes).  A residual
    model's inferer says it (a 2D network may restore thick-slice volumes through their planes); otherwise the
    network's ``spatial_dims``."""
    dims = getattr(inferer, "data_dims", None)
    return int(dims) if dims else int(getattr(getattr(network, "module", network), "spatial_dims", 2))


def intensity_scale(image: torch.Tensor, upper_percentile: float = 99.5) -> float:
    """The value mapped to 1 (the training scale): the ``upper_percentile`` of the positive voxels."""
    v = torch.as_tensor(image).float().flatten()
    fg = v[v > 0]
    if fg.numel() == 0:
        raise ValueError("image has no positive voxels; expected a magnitude image (e.g. MRI) with signal.")
    return float(np.percentile(fg.numpy(), upper_percentile))


@torch.no_grad()
def restore_image(
    network,
    inferer,
    task: str,
    image,
    mask=None,
    factor: float = 1.0,
    sampler: str = "dpm++",
    num_steps: int = 20,
    num_samples: int = 1,
    seed: int = 0,
    batch_size: int = 8,
    device=None,
    verbose: bool = False,
    patch_size: Sequence[int] | None = (64, 64, 64),
    overlap: float = 0.25,
    sw_batch_size: int = 1,
    channels_last: bool = False,
    autocast: str | None = None,
    compile: bool | str = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[MetaTensor, MetaTensor | None]:
    """Restore a 2D image or a volume with a conditional DDPM: a 2D model goes slice by slice along the third
    axis, a 3D model (``network.spatial_dims == 3``) takes the whole volume through overlapping patches.

    Args:
        network, inferer: the trained model (:class:`~monai_medgen.networks.ScoreUNet` with ``cond_channels``)
            and its :class:`~monai_medgen.inferers.ConditionalDiffusionInferer`.
        task: ``"sr"``, ``"denoise"`` or ``"inpaint"``.
        image: (1, H, W) or (1, H, W, D) ``MetaTensor`` (e.g. from :func:`monai_medgen.io.read_image`) in any
            intensity unit; it is scaled so that the 99.5th percentile of its positive voxels is 1 (the
            training scale) and the output scaled back.
        mask: inpainting only, same shape and geometry, > 0 = missing.
        factor: super-resolution only, how many times finer the output grid is: in-plane for a 2D model, one
            value or one per axis for a 3D model (e.g. ``(1, 1, 4)`` for 4 mm slices to 1 mm); 1: ``image`` is
            already on the fine grid (e.g. a blurred scan).
        sampler, num_steps: the sampler (``"ancestral"``, ``"ddim"``, ``"dpm++"``) and its network evaluations.
        num_samples: samples per slice; with more than 1 the mean is returned with the per-voxel standard
            deviation as an uncertainty map.
        seed: the same seed gives the same result; slice ``k`` of a volume (2D model) has its own seeds
            (``seed + k``), so the result does not depend on ``batch_size``.
        batch_size: slices sampled together (2D model).
        patch_size, overlap, sw_batch_size: 3D model: the network runs over overlapping patches of this size,
            blended at every sampling step (None: the whole volume at once); memory is bounded by the patch.
        channels_last, autocast, compile: speed options of the network call (off by default; see
            :func:`monai_medgen.samplers.accelerated`): ``channels_last`` memory format, ``"bf16"`` / ``"fp16"``
            autocast, ``torch.compile`` (True or a backend name).
        verbose: progress bars: one over the whole volume (slices done / total) for a 2D model, the sampler's
            steps over the whole volume for a 3D model.
        progress: ``progress(done, total)`` as the work advances: slices (planes for thick slices) for a 2D model,
            1 of 1 at the end for a 3D model (its sampler covers the whole volume at every step).

    Returns:
        ``(restored, std)``: ``MetaTensor`` on the output grid (the input's, or the finer one for
        super-resolution) with its affine; ``std`` is None for one sample.
    """
    _check_task(task)
    img = check_image(image)
    if int(num_samples) < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
    if isinstance(inferer, ResidualDiffusionInferer):  # blind residual models (monai_medgen.tasks)
        if inferer.family != task:
            raise ValueError(f"task {task!r} does not match the model, which restores {inferer.family!r}.")
        known_mask = check_mask(mask, img) if task == "inpaint" else None
        return restore_residual(
            network,
            inferer,
            img,
            mask=known_mask,
            factor=factor,
            num_steps=num_steps,
            num_samples=int(num_samples),
            seed=seed,
            sampler=sampler,
            device=device,
            verbose=verbose,
            speed={"channels_last": channels_last, "autocast": autocast, "compile": compile},
            progress=progress,
        )
    speed = {"channels_last": channels_last, "autocast": autocast, "compile": compile}
    if int(getattr(getattr(network, "module", network), "spatial_dims", 2)) == 3:
        with VolumeProgress(1, False, progress) as done:  # the sampler's own bar spans the volume
            restored = _restore_volume(
                network,
                inferer,
                task,
                img,
                mask,
                factor,
                sampler,
                num_steps,
                num_samples,
                seed,
                device,
                verbose,
                patch_size,
                overlap,
                sw_batch_size,
                speed,
            )
            done.update(1)
        return restored
    if task != "sr" and factor != 1:
        raise ValueError(f"factor applies to super-resolution only (task 'sr'), got factor={factor} for {task!r}.")
    known_mask = check_mask(mask, img) if task == "inpaint" else None
    if task == "sr" and factor != 1:
        img = upsample_in_plane(img, float(factor))
    hi = intensity_scale(img)
    x = img.as_tensor().float() / hi
    volume = x.ndim == 4
    slices = x.permute(3, 0, 1, 2) if volume else x[None]  # (S, 1, H, W)
    m_slices = None
    if known_mask is not None:
        m_slices = known_mask.permute(3, 0, 1, 2) if volume else known_mask[None]
    dev = torch.device(device) if device is not None else next(network.parameters()).device
    mult = size_multiple(network)
    h, w = slices.shape[-2:]
    ph, pw = -(-h // mult) * mult - h, -(-w // mult) * mult - w
    pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    # the U-Net's bottleneck attention costs (pixels per slice)^2 per slice: at most as many slices at once as keep it
    # to that of 8 slices of 256 x 256 (a 512 x 512 slice goes alone); results do not depend on the batch size
    batch_size = max(1, min(int(batch_size), int(8 * (256 * 256 / ((h + ph) * (w + pw))) ** 2)))
    means, stds = [], []
    network.eval()
    bar = VolumeProgress(slices.shape[0], verbose, progress, desc=f"restore ({task})")
    for start in range(0, slices.shape[0], int(batch_size)):
        s = torch.nn.functional.pad(slices[start : start + int(batch_size)], pad) * 2 - 1
        extra = {}
        if m_slices is not None:
            m = torch.nn.functional.pad(m_slices[start : start + int(batch_size)], pad)
            known = torch.where(m.bool(), -torch.ones_like(s), s)
            cond = torch.cat([known, m], 1)
            extra = {"mask": m.to(dev), "known": known.to(dev)}
        else:
            cond = s
        ks = range(start, start + s.shape[0])  # slice k: its own starting and sampler noise
        noise = torch.cat(
            [torch.randn((1, *s.shape[1:]), generator=torch.Generator().manual_seed(int(seed) + k)) for k in ks]
        )
        gen = [torch.Generator(device=dev).manual_seed(int(seed) + k + SAMPLER_SEED_OFFSET) for k in ks]
        out = inferer.sample(
            noise.to(dev),
            network,
            sampler=sampler,
            num_steps=int(num_steps),
            condition=cond.to(dev),
            num_samples=int(num_samples),
            generator=gen,
            verbose=verbose,
            **extra,
            **speed,
        )
        mean, std = out if int(num_samples) > 1 else (out, None)
        crop = (..., slice(pad[2], pad[2] + h), slice(pad[0], pad[0] + w))
        means.append(mean[crop].float().cpu())
        if std is not None:
            stds.append(std[crop].float().cpu())
        bar.update(s.shape[0])
    bar.close()
    mean = (torch.cat(means) * 0.5 + 0.5) * hi
    if m_slices is not None:  # the known voxels exactly as given
        mean = torch.where(m_slices.bool(), mean, slices * hi)
    std = torch.cat(stds) * 0.5 * hi if stds else None

    def back(t: torch.Tensor) -> MetaTensor:
        t = t.permute(1, 2, 3, 0) if volume else t[0]
        return MetaTensor(t, affine=img.affine, meta={k: v for k, v in img.meta.items() if k != "affine"})

    return back(mean), (None if std is None else back(std))


def _restore_volume(
    network,
    inferer,
    task,
    img,
    mask,
    factor,
    sampler,
    num_steps,
    num_samples,
    seed,
    device,
    verbose,
    patch_size,
    overlap,
    sw_batch_size,
    speed=None,
) -> tuple[MetaTensor, MetaTensor | None]:
    """:func:`restore_image` for a 3D network: the whole volume, the network over overlapping patches."""
    if img.ndim != 4:
        raise ValueError(f"image must be a volume (1, H, W, D) for a 3D model, got shape {tuple(img.shape)}.")
    factors = [float(factor)] * 3 if np.isscalar(factor) else [float(f) for f in factor]
    if task != "sr" and any(f != 1 for f in factors):
        raise ValueError(f"factor applies to super-resolution only (task 'sr'), got factor={factor} for {task!r}.")
    known_mask = check_mask(mask, img) if task == "inpaint" else None
    if task == "sr" and any(f != 1 for f in factors):
        img = upsample(img, factors, mode="trilinear")
    hi = intensity_scale(img)
    x = (img.as_tensor().float() / hi)[None] * 2 - 1  # (1, 1, H, W, D)
    dev = torch.device(device) if device is not None else next(network.parameters()).device
    mult = size_multiple(network)
    shape = x.shape[2:]
    extra = [-(-n // mult) * mult - n for n in shape]
    lefts = [e // 2 for e in extra]
    pad = [v for e, left in zip(reversed(extra), reversed(lefts)) for v in (left, e - left)]  # F.pad: last axis first
    x = torch.nn.functional.pad(x, pad, value=-1.0)
    kwargs = {}
    cond = x
    if known_mask is not None:
        m = torch.nn.functional.pad(known_mask[None], pad)
        known = torch.where(m.bool(), -torch.ones_like(x), x)
        cond = torch.cat([known, m], 1)
        kwargs = {"mask": m.to(dev), "known": known.to(dev)}
    patch = None
    if patch_size is not None:
        patch = [min(int(p), n) for p, n in zip(patch_size, x.shape[2:])]
        patch = [max(mult, (p // mult) * mult) for p in patch]
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    noise = torch.randn(x.shape, generator=g).to(dev)
    gen = torch.Generator(device=dev).manual_seed(int(seed) + SAMPLER_SEED_OFFSET)
    out = inferer.sample(
        noise,
        network,
        sampler=sampler,
        num_steps=int(num_steps),
        condition=cond.to(dev),
        num_samples=int(num_samples),
        generator=gen,
        verbose=verbose,
        patch_size=patch,
        overlap=float(overlap),
        sw_batch_size=int(sw_batch_size),
        **kwargs,
        **(speed or {}),
    )
    mean, std = out if int(num_samples) > 1 else (out, None)
    crop = (0, slice(None)) + tuple(slice(left, left + n) for left, n in zip(lefts, shape))
    mean = (mean[crop].float().cpu() * 0.5 + 0.5) * hi
    if known_mask is not None:
        mean = torch.where(known_mask.bool(), mean, img.as_tensor().float())
    meta = {k: v for k, v in img.meta.items() if k != "affine"}
    out_std = None if std is None else MetaTensor(std[crop].float().cpu() * 0.5 * hi, affine=img.affine, meta=meta)
    return MetaTensor(mean, affine=img.affine, meta=meta), out_std


def restore_file(
    network,
    inferer,
    task: str,
    input_path,
    output_path,
    mask_path=None,
    uncertainty_path=None,
    factor: float = 1.0,
    sampler: str = "dpm++",
    num_steps: int = 20,
    num_samples: int = 1,
    seed: int = 0,
    model_name: str = "",
    bundle_version: str = "",
    overwrite: bool = False,
    device=None,
    verbose: bool = False,
    patch_size: Sequence[int] | None = (64, 64, 64),
    overlap: float = 0.25,
    sw_batch_size: int = 1,
    channels_last: bool = False,
    autocast: str | None = None,
    compile: bool | str = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Read ``input_path`` (NIfTI, NRRD, MHA or a DICOM series folder), restore it with :func:`restore_image` and
    write the result to ``output_path`` (format from its suffix) in the input's world space, marked synthetic
    in its header with a provenance sidecar (model, task, sampler, steps, seed, input checksum).  With
    ``num_samples`` > 1 and ``uncertainty_path`` the standard deviation map is written too.

    Nothing the user gave is overwritten: an output equal to an input is refused, and existing outputs are
    replaced only with ``overwrite``.  ``channels_last``, ``autocast``, ``compile``: speed options, ``verbose`` (one
    progress bar over the volume) and ``progress`` (a ``(done, total)`` callback) as in :func:`restore_image`.  Returns ``{"output", "uncertainty", "seconds"}``.
    """

    inputs = [p for p in (input_path, mask_path) if p]
    for target in (output_path, uncertainty_path):
        if target:
            io._check_output(target, inputs, overwrite=True, what="output")  # refuse input == output early
    start = time.perf_counter()
    image = io.read_image(input_path, channels=1)
    if image.ndim == 4 and image.shape[-1] == 1:  # a 2D image stored as a one-slice volume
        image = image[..., 0]
    mask = None
    if mask_path:
        mask = io.read_image(mask_path, channels=1)
        if mask.ndim == 4 and mask.shape[-1] == 1:
            mask = mask[..., 0]
    elif task == "inpaint":
        raise ValueError("mask is required for inpainting: pass a mask file (1 = missing) of the image's geometry.")
    restored, std = restore_image(
        network,
        inferer,
        task,
        image,
        mask=mask,
        factor=factor,
        sampler=sampler,
        num_steps=num_steps,
        num_samples=num_samples,
        seed=seed,
        device=device,
        verbose=verbose,
        patch_size=patch_size,
        overlap=overlap,
        sw_batch_size=sw_batch_size,
        channels_last=channels_last,
        autocast=autocast,
        compile=compile,
        progress=progress,
    )
    provenance = io.Provenance(
        model=model_name or type(getattr(network, "module", network)).__name__,
        bundle_version=bundle_version,
        task={"sr": "super_resolution", "denoise": "denoise", "inpaint": "inpaint"}[task],
        sampler=sampler,
        steps=int(num_steps),
        seed=int(seed),
        input_checksum=io.sha256_of(inputs),
        extra={
            "num_samples": int(num_samples),
            "factor": factor if np.isscalar(factor) else [float(f) for f in factor],
            # a denoising model's test-time adaptation (ResidualDiffusionInferer.adapt_steps)
            **(
                {"adapt_steps": int(inferer.adapt_steps)}
                if task == "denoise" and hasattr(inferer, "adapt_steps")
                else {}
            ),
        },
    )
    out = io.write_image(restored, output_path, provenance=provenance, overwrite=overwrite, inputs=inputs)
    unc = None
    if uncertainty_path and std is not None:
        unc_prov = dataclasses.replace(provenance, extra={**provenance.extra, "map": "per-voxel standard deviation"})
        unc = io.write_image(std, uncertainty_path, provenance=unc_prov, overwrite=overwrite, inputs=inputs)
    seconds = time.perf_counter() - start
    logger.info(f"restored {input_path} -> {out} ({task}, {sampler} {num_steps} steps) in {seconds:.1f} s")
    return {"output": out, "uncertainty": unc, "seconds": seconds}


# ---------------------------------------------------------------------------------------------
# the bundles' inference and evaluation
# ---------------------------------------------------------------------------------------------
def demo_input(
    task: str, output_dir, num_slices: int = 4, size: int = 128, factor: float = SR_FACTOR, seed: int = 1000
) -> dict:
    """Write a degraded demo input from the held-out Colin27 brain: ``num_slices`` axial slices at ``size`` x
    ``size`` (181 mm field of view) stacked as a volume, degraded for ``task`` with the test-set parameters
    (4x coarser in-plane for ``"sr"``, noise for ``"denoise"``, the central hole for ``"inpaint"``, whose mask
    is written too).  Returns ``{"input", "mask" (or ""), "truth"}`` paths of NIfTI files."""

    _check_task(task)
    os.makedirs(str(output_dir), exist_ok=True)
    truth = torch.stack([torch.as_tensor(d["image"]) for d in demo_slices("colin27", size=size, num_slices=num_slices)])
    test = make_test_set(task, truth, seed=seed, factor=factor)
    spacing = 181.0 / size
    affine = torch.diag(torch.tensor([spacing, spacing, 4 * spacing, 1.0], dtype=torch.float64))

    def write(t: torch.Tensor, path: str, description: str, aff=affine) -> None:  # (N, 1, H, W) -> (H, W, N)

        img = nib.Nifti1Image(t[:, 0].permute(1, 2, 0).numpy().astype(np.float32), aff.numpy())
        img.header["descrip"] = description.encode()[:79]
        img.set_qform(aff.numpy(), code=1)
        nib.save(img, path)

    paths = {"truth": os.path.join(str(output_dir), "demo_truth.nii.gz"), "mask": ""}
    write(truth, paths["truth"], "Colin27 demo slices (ground truth)")
    shown = test.shown
    aff = affine
    if task == "sr":
        shown = test.measurement  # the coarse image itself, on its own grid
        aff = affine.clone()
        aff[0, 0] = aff[1, 1] = spacing * truth.shape[-1] / shown.shape[-1]
        aff[:2, 3] = (aff[0, 0] - spacing) / 2
    paths["input"] = os.path.join(str(output_dir), "demo_input.nii.gz")
    write(shown, paths["input"], f"Colin27 demo slices degraded ({task})", aff)
    if test.mask is not None:
        paths["mask"] = os.path.join(str(output_dir), "demo_mask.nii.gz")
        write(test.mask, paths["mask"], "inpainting mask, 1 = missing")
    return paths


def demo_volume_input(output_dir, factor: Sequence[float] = (1, 1, 4), crop: Sequence[int] | None = None) -> dict:
    """Write the held-out Colin27 brain at its native 1 mm (181 x 217 x 181, its own affine) as a thick-slice
    acquisition for 3D super-resolution: the truth cropped to a multiple of ``factor`` per axis (and to the
    central ``crop`` box if given), and its area-downsampled copy on the coarse grid with the matching affine.
    Returns ``{"input", "mask": "", "truth"}`` NIfTI paths."""

    vol, affine = load_colin27()
    vol = scale_intensity(vol)
    factors = [int(round(float(f))) for f in factor]
    shape = [n if not crop else min(n, int(c)) for n, c in zip(vol.shape, crop or vol.shape)]
    shape = [n - n % f for n, f in zip(shape, factors)]
    start = [(n - m) // 2 for n, m in zip(vol.shape, shape)]
    vol = vol[tuple(slice(a, a + m) for a, m in zip(start, shape))]
    affine = affine.copy()
    affine[:3, 3] = affine[:3, :3] @ np.asarray(start, dtype=np.float64) + affine[:3, 3]
    truth = MetaTensor(torch.as_tensor(vol)[None], affine=torch.as_tensor(affine))
    low = SimulateLowResolution([float(f) for f in factors]).downsample(truth)
    os.makedirs(str(output_dir), exist_ok=True)
    paths = {
        "truth": os.path.join(str(output_dir), "demo_truth.nii.gz"),
        "mask": "",
        "input": os.path.join(str(output_dir), "demo_input.nii.gz"),
    }
    for key, img, text in (("truth", truth, "Colin27 1 mm (ground truth)"), ("input", low, "Colin27 thick slices")):
        out = nib.Nifti1Image(np.asarray(img[0], dtype=np.float32), np.asarray(img.affine, dtype=np.float64))
        out.header["descrip"] = text.encode()
        out.set_qform(np.asarray(img.affine, dtype=np.float64), code=1)
        nib.save(out, paths[key])
    return paths


def run_inference(
    network,
    inferer,
    task: str,
    output_dir,
    input_image: str = "",
    mask_image: str = "",
    factor: float = SR_FACTOR,
    sampler: str = "dpm++",
    num_steps: int = 20,
    num_samples: int = 1,
    seed: int = 0,
    model_name: str = "",
    bundle_version: str = "",
    device=None,
    patch_size: Sequence[int] | None = (64, 64, 64),
    overlap: float = 0.25,
    sw_batch_size: int = 1,
    demo_crop: Sequence[int] | None = None,
) -> dict:
    """The restoration bundles' inference: restore ``input_image`` (or, when empty, a degraded demo input written
    by :func:`demo_input`, or for a 3D model :func:`demo_volume_input` cropped to ``demo_crop``) into ``output_dir/<name>_<task>_synthetic.nii.gz`` (plus ``..._std.nii.gz`` with
    more than one sample).  For a demo input the PSNR against the truth of the input and of the output are
    logged."""

    demo = not str(input_image or "").strip() or str(input_image) == "None"
    volume_model = int(getattr(getattr(network, "module", network), "spatial_dims", 2)) == 3
    thick = task == "sr" and not np.isscalar(factor) and len(factor) == 3 and float(factor[2]) != 1
    volume_model = volume_model or thick  # a 2D residual model restores thick slices through their planes
    if demo and volume_model:
        paths = demo_volume_input(output_dir, factor=factor, crop=demo_crop)
        input_image, mask_image = paths["input"], paths["mask"]
    elif demo:
        paths = demo_input(task, output_dir, factor=factor)
        input_image, mask_image = paths["input"], paths["mask"]
    name = os.path.basename(str(input_image).rstrip("/"))
    for ext in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".dcm"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    out = os.path.join(str(output_dir), f"{name}_{task}_synthetic.nii.gz")
    unc = os.path.join(str(output_dir), f"{name}_{task}_std.nii.gz") if int(num_samples) > 1 else None
    result = restore_file(
        network,
        inferer,
        task,
        input_image,
        out,
        mask_path=mask_image or None,
        uncertainty_path=unc,
        factor=factor if task == "sr" else 1.0,
        sampler=sampler,
        num_steps=num_steps,
        num_samples=num_samples,
        seed=seed,
        model_name=model_name,
        bundle_version=bundle_version,
        overwrite=True,
        device=device,
        patch_size=patch_size,
        overlap=overlap,
        sw_batch_size=sw_batch_size,
    )
    if demo:
        truth = io.read_image(paths["truth"])
        restored = io.read_image(result["output"])
        scale = intensity_scale(truth)
        given = io.read_image(input_image)
        if task == "sr":
            given = upsample(given, factor, mode="trilinear") if volume_model else upsample_in_plane(given, factor)
        before = float(psnr(given.as_tensor()[None] / scale, truth.as_tensor()[None] / scale).mean())
        after = float(psnr(restored.as_tensor()[None] / scale, truth.as_tensor()[None] / scale).mean())
        logger.info(f"demo ({task}): PSNR of the input {before:.2f} dB, of the restoration {after:.2f} dB")
        print(f"demo ({task}): PSNR input {before:.2f} dB -> restored {after:.2f} dB; wrote {result['output']}")
        result.update(psnr_input=before, psnr_output=after)
    return result


COLUMNS = (
    ("psnr", "PSNR (dB)", 2),
    ("ssim", "SSIM", 3),
    ("sharpness", "rel. sharpness", 3),
    ("consistency", "data consistency (dB)", 2),
)


def format_table(task: str, rows: Sequence[tuple[str, dict]]) -> str:
    """A markdown table of :func:`score` rows (``(label, row)``), with PSNR in the hole for inpainting."""
    cols = list(COLUMNS) + ([("hole", "PSNR in hole (dB)", 2)] if task == "inpaint" else [])

    def fmt(v: float, d: int) -> str:
        return "inf" if math.isinf(v) else f"{v:.{d}f}"

    lines = ["| method | " + " | ".join(c[1] for c in cols) + " |", "|---|" + "---|" * len(cols)]
    lines += [f"| {label} | " + " | ".join(fmt(r[k], d) for k, _, d in cols) + " |" for label, r in rows]
    return "\n".join(lines)


INPUT_LABEL = {
    "sr": "degraded input (4x low-res, nearest)",
    "denoise": "degraded input (noisy)",
    "inpaint": "degraded input (hole filled with 0)",
}


def evaluate_model(
    network,
    inferer,
    task: str,
    num_slices: int = 16,
    num_samples: int = 8,
    sampler: str = "dpm++",
    num_steps: int = 20,
    seed: int = 0,
    dataset_dir=None,
    extra_rows: Sequence[tuple[str, Callable[[TestSet], torch.Tensor]]] = (),
    device=None,
) -> dict:
    """Score the model on held-out slices (Colin27, or ``dataset_dir``) with the fixed test degradations, beside
    the degraded input and the classical baselines (denoising ones tuned on 16 MNI152 slices); print the table.

    ``extra_rows``: further ``(label, fn(test_set) -> output in [0, 1])`` methods (e.g. a regression network),
    placed before ours.  Returns ``{"rows", "table", "mean", "std", "test", "classical", "seconds"}``.
    """

    items = prepare_items(dataset_dir, source="colin27", size=128, num_slices=num_slices, keys=("image",))
    truth = torch.stack([torch.as_tensor(np.asarray(it["image"]), dtype=torch.float32) for it in items])
    test = make_test_set(task, truth)
    tuning = None
    if task == "denoise":
        tune_items = prepare_items(None, source="mni152", size=128, num_slices=16, keys=("image",))
        tuning = make_test_set(
            task, torch.stack([torch.as_tensor(np.asarray(it["image"])) for it in tune_items]), seed=2000
        )
    classical = classical_baselines(task, test, tuning)
    start = time.perf_counter()
    mean, std = restore_slices(inferer, network, test, sampler, num_steps, num_samples, seed, device=device)
    seconds = time.perf_counter() - start
    rows = [(INPUT_LABEL[task], score(test.shown, test))]
    rows += [(label, score(out, test)) for label, out in classical]
    rows += [(label, score(fn(test), test)) for label, fn in extra_rows]
    ours = f"ours: conditional DDPM, mean of {num_samples}, {'DPM-Solver++' if sampler == 'dpm++' else sampler} {num_steps} steps"
    rows.append((ours, score(mean, test)))
    table = format_table(task, rows)
    print(table, flush=True)
    return {
        "rows": rows,
        "table": table,
        "mean": mean,
        "std": std,
        "test": test,
        "classical": classical,
        "seconds": seconds,
    }


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far (MB; Linux ``ru_maxrss``)."""
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def _cubic_bspline(image: MetaTensor, size: Sequence[int]) -> torch.Tensor:
    """Cubic B-spline interpolation (``scipy.ndimage.zoom``, order 3, voxel grids aligned at their corners as in
    area downsampling) of (1, *spatial) onto ``size``."""
    from scipy.ndimage import zoom

    a = image.as_tensor()[0].double().numpy()
    ratios = [m / n for m, n in zip(size, a.shape)]
    return torch.as_tensor(zoom(a, ratios, order=3, mode="nearest", grid_mode=True), dtype=torch.float32)[None]


def evaluate_volume(
    network,
    inferer,
    output_dir,
    factor: Sequence[float] = (1, 1, 4),
    sampler: str = "dpm++",
    num_steps: int = 10,
    seed: int = 0,
    patch_size: Sequence[int] | None = (64, 64, 64),
    overlap: float = 0.25,
    sw_batch_size: int = 1,
    crop: Sequence[int] | None = None,
    device=None,
) -> dict:
    """3D super-resolution of the held-out Colin27 brain at 1 mm from thick slices (:func:`demo_volume_input`):
    PSNR, SSIM and sharpness relative to the truth over the brain's bounding box for trilinear interpolation and
    for the model, the restoration's wall-clock time and the process's peak resident memory; prints a table."""

    paths = demo_volume_input(output_dir, factor=factor, crop=crop)
    out = os.path.join(str(output_dir), "demo_input_sr_synthetic.nii.gz")
    res = restore_file(
        network,
        inferer,
        "sr",
        paths["input"],
        out,
        factor=factor,
        sampler=sampler,
        num_steps=num_steps,
        seed=seed,
        patch_size=patch_size,
        overlap=overlap,
        sw_batch_size=sw_batch_size,
        overwrite=True,
        device=device,
        model_name="cddpm_super_resolution_3d",
    )
    truth = io.read_image(paths["truth"]).as_tensor()[None]
    linear = upsample(io.read_image(paths["input"]), factor, mode="trilinear").as_tensor()[None]
    ours = io.read_image(out).as_tensor()[None]
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in torch.nonzero(truth[0, 0] > 0.02, as_tuple=True))
    sel = (slice(None), slice(None), *box)
    rows = []
    spline = _cubic_bspline(io.read_image(paths["input"]), tuple(truth.shape[2:]))[None]
    ours_label = f"ours: {getattr(inferer, 'family', '') and 'residual diffusion through the slice planes, ' or '3D conditional DDPM, '}{sampler} {num_steps} steps"
    for label, img in (("trilinear interpolation", linear), ("cubic B-spline", spline), (ours_label, ours)):
        a, t = img[sel].clamp(0, 1), truth[sel]
        rows.append((label, float(psnr(a, t)[0]), float(ssim(a, t)[0]), float(relative_sharpness(a, t)[0])))
    shape = tuple(int(s) for s in truth.shape[2:])
    print(
        f"Colin27 {shape[0]}x{shape[1]}x{shape[2]} at 1 mm from {list(factor)}-times coarser slices, brain box "
        f"{tuple(b.stop - b.start for b in box)}; patches {list(patch_size) if patch_size else 'none'}, overlap "
        f"{overlap}; restoration {res['seconds']:.0f} s, peak resident memory {peak_memory_mb():.0f} MB "
        f"(torch threads {torch.get_num_threads()}).\n"
    )
    print("| method | PSNR (dB) | SSIM | rel. sharpness |\n|---|---|---|---|")
    for label, p, s_, sh in rows:
        print(f"| {label} | {p:.2f} | {s_:.3f} | {sh:.3f} |")
    return {"rows": rows, "seconds": res["seconds"], "peak_memory_mb": peak_memory_mb(), "output": out}
