"""Conditional DDPM restoration against classical methods and a regression network (issue 3, deliverable 5).

    python scripts/evaluate_conditional.py --tasks sr,denoise,inpaint --minutes 20
    python scripts/evaluate_conditional.py --quick          # smoke run: tiny networks, 20 s of training each

Tasks, all on 128x128 brain slices in [0, 1]:

- ``sr``: 4x super-resolution; area downsampling to 32x32 (``SimulateLowResolution(4)``), the condition is the
  bicubic image back on the 128x128 grid;
- ``denoise``: Gaussian noise of sigma 0.1 plus 5% salt-and-pepper (``RandMixedNoise``);
- ``inpaint``: a central 32x32 hole (``RandInpaintingMask(center_box=32)``) at test time, random boxes in
  training; the model is mask-conditioned (condition = masked image + mask channel).

Per task two models train on MNI152 axial slices (nilearn) for the same wall-clock budget (``--minutes`` each),
in MONAI's ``SupervisedTrainer`` with AdamW (warm-up + cosine decay sized to the budget) and EMA of the weights;
the degradation is drawn on the fly in the MONAI ``Dataset`` transform chain:

- ours: a conditional DDPM, ``ScoreUNet`` with ``cond_channels`` (eps prediction, T = 2000 linear betas by
  default) trained and sampled through ``ConditionalDiffusionInferer``;
- "same network, regression": the same MONAI ``DiffusionModelUNet`` body (same channels, blocks, attention)
  without the noisy-image input and with its timestep fixed to 0, trained with MSE to output the clean image
  from the condition.

Evaluation on held-out Colin27 axial slices (``--eval-slices``), fixed noise seeds and masks: PSNR, SSIM,
sharpness relative to the truth (RMS Sobel gradient) and data consistency (the output degraded again and
compared with the measurement: the 32x32 image for SR, the same noise draw for denoising, the known region for
inpainting), for the degraded input, classical baselines (bicubic; TV and non-local means with parameters tuned
on MNI152 slices; biharmonic inpainting), the regression network and ours (mean of ``--num-samples``
DPM-Solver++ samples, whose standard deviation is the uncertainty map).  A second table gives PSNR against the
number of network evaluations (one sample per slice from the same starting noise) for DDIM 50,
DPM-Solver++ 10/20/25 and, with ``--full-chain``, the ancestral sampler over all T steps.
A PNG per task (``<figure-dir>/conditional_<task>.png``) shows input, ours, baseline, truth and uncertainty.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

TASKS = ("sr", "denoise", "inpaint")
SR_FACTOR = 4.0
NOISE_SIGMA, SALT_PEPPER = 0.1, 0.05
HOLE = 32  # side of the central test hole
TRAIN_HOLE_AREA = (24**2, 44**2)  # pixels covered by the random training boxes (the test hole: 32^2)
EVAL_SEED, TUNE_SEED = 1000, 2000  # noise seeds of the Colin27 test set and the MNI152 tuning set
NFE_SETTINGS = (("ddim", 50), ("dpm++", 10), ("dpm++", 20), ("dpm++", 25))
TV_WEIGHTS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5)
NLM_H = (0.08, 0.1, 0.12, 0.15, 0.18, 0.2, 0.25, 0.3)
FULL = {"channels": "32,64,64,128", "minutes": 20.0, "eval_slices": 16, "num_samples": 8, "steps": 20, "nfe_slices": 4}
QUICK = {"channels": "8,16,16", "minutes": 20 / 60, "eval_slices": 2, "num_samples": 2, "steps": 5, "nfe_slices": 1}


# ---------------------------------------------------------------------------------------------
# degradations: the training chain and the fixed test sets
# ---------------------------------------------------------------------------------------------
def cond_channels(task: str) -> int:
    """Channels of the model's condition: the degraded image, plus the mask for inpainting."""
    return 2 if task == "inpaint" else 1


def training_transforms(task: str, crop: int | None, image_size: int = 128):
    """MONAI chain for ``{"image": (1, H, W) in [0, 1]}`` items: random crop and flip, the task's random
    degradation written to ``"cond"``, then image and condition scaled to [-1, 1] (the mask channel stays 0/1).

    The degradation is defined on [0, 1] intensities (sigma 0.1, salt 1, pepper 0), so it comes before the
    scaling (unlike :func:`monai_medgen.engines.slice_training_transforms`, which scales first).
    """
    from monai.transforms import Compose, ConcatItemsd, EnsureTyped, RandFlipd, RandSpatialCropd, ScaleIntensityRanged

    from monai_medgen.transforms import RandInpaintingMaskd, RandMixedNoised, SimulateLowResolutiond

    chain = [EnsureTyped(keys="image", track_meta=False)]
    if crop:
        chain.append(RandSpatialCropd("image", roi_size=crop, random_size=False))
    chain.append(RandFlipd("image", prob=0.5, spatial_axis=0))
    if task == "sr":
        chain.append(SimulateLowResolutiond("image", factor=SR_FACTOR, cond_key="cond"))
    elif task == "denoise":
        chain.append(RandMixedNoised("image", sigma=NOISE_SIGMA, salt_pepper=SALT_PEPPER, low=0.0, high=1.0, cond_key="cond"))
    else:
        area = float((crop or image_size) ** 2)
        chain.append(
            RandInpaintingMaskd(
                "image", mask_type="box", min_fraction=min(TRAIN_HOLE_AREA[0] / area, 0.5),
                max_fraction=min(TRAIN_HOLE_AREA[1] / area, 0.5), num_boxes=(1, 2), cond_key="cond", mask_key="mask",
            )
        )
    chain.append(ScaleIntensityRanged(["image", "cond"], 0.0, 1.0, -1.0, 1.0))
    if task == "inpaint":
        chain.append(ConcatItemsd(["cond", "mask"], name="cond"))
    return Compose(chain)


@dataclass
class TestSet:
    """Fixed degradations of clean slices, everything (N, C, H, W) on the CPU.

    Attributes:
        truth: clean slices in [0, 1].
        shown: the degraded input as measured (on the 128 grid), scored and shown as "degraded input".
        cond: the model's condition in [-1, 1] (plus the 0/1 mask channel for inpainting).
        measurement: what the data consistency compares with: the 32x32 image (SR), the noisy image (denoising),
            the masked image (inpainting).
        degrade_fn: the forward model with the test set's parameters (None for inpainting: the known region is
            compared as it is).
        mask: (N, 1, H, W) hole, 1 = missing (inpainting only).
    """

    truth: torch.Tensor
    shown: torch.Tensor
    cond: torch.Tensor
    measurement: torch.Tensor
    degrade_fn: Callable[[torch.Tensor], torch.Tensor] | None
    mask: torch.Tensor | None = None

    def first(self, n: int) -> TestSet:
        """The first ``n`` slices (their noise seeds and masks unchanged)."""
        return TestSet(
            self.truth[:n], self.shown[:n], self.cond[:n], self.measurement[:n], self.degrade_fn,
            None if self.mask is None else self.mask[:n],
        )


def make_test_set(task: str, truth: torch.Tensor, seed: int) -> TestSet:
    """Degrade ``truth`` (N, 1, H, W) in [0, 1] with fixed parameters: slice ``i`` gets noise seed ``seed + i``."""
    from monai_medgen.transforms import RandInpaintingMask, RandMixedNoise, SimulateLowResolution

    if task == "sr":
        sim = SimulateLowResolution(SR_FACTOR)  # area down, bicubic back onto the grid (2D default)

        def downsample(x: torch.Tensor) -> torch.Tensor:
            return torch.stack([torch.as_tensor(sim.downsample(xi)) for xi in x])

        nearest = SimulateLowResolution(SR_FACTOR, upsample_mode="nearest")
        shown = torch.stack([nearest(xi) for xi in truth])
        bicubic = torch.stack([sim(xi) for xi in truth])
        return TestSet(truth, shown, bicubic * 2 - 1, downsample(truth), downsample)
    if task == "denoise":

        def add_noise(x: torch.Tensor) -> torch.Tensor:
            return torch.stack(
                [RandMixedNoise(NOISE_SIGMA, SALT_PEPPER, low=0.0, high=1.0, seed=seed + i)(xi) for i, xi in enumerate(x)]
            )

        noisy = add_noise(truth)
        return TestSet(truth, noisy, noisy * 2 - 1, noisy, add_noise)
    if task == "inpaint":
        hole = RandInpaintingMask(center_box=HOLE, apply_mask=True)
        masked, mask = (torch.stack(parts) for parts in zip(*(hole(xi) for xi in truth)))
        return TestSet(truth, masked, torch.cat([masked * 2 - 1, mask], 1), masked, None, mask)
    raise ValueError(f"task must be one of {TASKS}, got {task!r}.")


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------
def score(output: torch.Tensor, test: TestSet) -> dict[str, float]:
    """Mean over slices of PSNR, SSIM, relative sharpness, data consistency (and PSNR in the hole)."""
    from monai_medgen.metrics import data_consistency, masked_psnr, psnr, relative_sharpness, ssim

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
# classical baselines
# ---------------------------------------------------------------------------------------------
def _skimage():
    try:
        import skimage.restoration as restoration
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("The classical baselines need scikit-image: pip install scikit-image.") from e
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
        lambda a: _skimage().denoise_nl_means(a, h=h, sigma=NOISE_SIGMA, patch_size=5, patch_distance=6, fast_mode=True),
        images,
    )


def biharmonic_inpaint(masked: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Biharmonic inpainting of (N, 1, H, W) slices with their (N, 1, H, W) holes."""
    out = [_skimage().inpaint_biharmonic(m[0].double().numpy(), k[0].numpy() > 0) for m, k in zip(masked, mask)]
    return torch.as_tensor(np.stack(out)[:, None], dtype=torch.float32).clamp(0, 1)


def tune(method: Callable[[torch.Tensor, float], torch.Tensor], grid, tuning: TestSet) -> float:
    """The grid value with the best mean PSNR on a tuning set (MNI152 training slices, never the test brain)."""
    from monai_medgen.metrics import psnr

    scores = [float(psnr(method(tuning.shown, value), tuning.truth).mean()) for value in grid]
    return grid[int(np.argmax(scores))]


def classical_rows(task: str, test: TestSet, tuning: TestSet | None) -> list[tuple[str, torch.Tensor]]:
    """(label, output in [0, 1]) of the classical baselines; the first is the figure's baseline."""
    if task == "sr":
        from monai_medgen.transforms import SimulateLowResolution

        bicubic = SimulateLowResolution(SR_FACTOR, upsample_mode="bicubic")
        return [("bicubic", torch.stack([bicubic(x) for x in test.truth]).clamp(0, 1))]
    if task == "denoise":
        weight = tune(tv_denoise, TV_WEIGHTS, tuning)
        h = tune(nlm_denoise, NLM_H, tuning)
        return [
            (f"TV (Chambolle, weight {weight:g} tuned on MNI152)", tv_denoise(test.shown, weight)),
            (f"non-local means (h {h:g} tuned on MNI152)", nlm_denoise(test.shown, h)),
        ]
    return [("biharmonic", biharmonic_inpaint(test.shown, test.mask))]


# ---------------------------------------------------------------------------------------------
# networks and training
# ---------------------------------------------------------------------------------------------
def _unet_kwargs(channels: tuple[int, ...], quick: bool) -> dict:
    return {
        "channels": channels,
        "num_res_blocks": 1,
        "attention_levels": (False,) * len(channels),
        "norm_num_groups": 8 if quick else 16,
        "num_head_channels": 8 if quick else 32,
    }


def diffusion_network(task: str, channels: tuple[int, ...], quick: bool) -> nn.Module:
    """Ours: eps(z, gamma, condition) on MONAI's ``DiffusionModelUNet`` (``ScoreUNet`` without Fourier features
    or residual output: a plain DDPM eps network, the condition concatenated to z)."""
    from monai_medgen.networks import ScoreUNet

    return ScoreUNet(
        2, 1, cond_channels=cond_channels(task), fourier_exponents=(), residual=False, **_unet_kwargs(channels, quick)
    )


class RegressionUNet(nn.Module):
    """The same network, regression: the ``DiffusionModelUNet`` body of :func:`diffusion_network` (same
    channels, blocks and attention), fed the condition only, with its timestep fixed to 0; it outputs the clean
    image (1, H, W) in [-1, 1] directly.  Input (B, cond_channels, H, W)."""

    def __init__(self, task: str, channels: tuple[int, ...], quick: bool):
        super().__init__()
        from monai.networks.nets import DiffusionModelUNet

        self.unet = DiffusionModelUNet(2, cond_channels(task), 1, **_unet_kwargs(channels, quick))

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        timesteps = torch.zeros(condition.shape[0], dtype=torch.long, device=condition.device)
        return self.unet(condition, timesteps)


def regression_prepare_batch(batchdata, device=None, non_blocking: bool = False, **kwargs):
    """``SupervisedTrainer`` batch for the regression network: input the condition, target the clean image."""
    cond = torch.as_tensor(batchdata["cond"]).to(device=device, non_blocking=non_blocking, **kwargs)
    image = torch.as_tensor(batchdata["image"]).to(device=device, non_blocking=non_blocking, **kwargs)
    return cond, image


def _seconds_per_iteration(network, inferer, prepare_batch, loader, device, repeats: int = 2) -> float:
    """Time of one forward + backward pass on a real batch (best of ``repeats`` after one warm-up); the
    gradients are discarded.  Sizes the cosine LR decay to the wall-clock budget."""
    inputs, target, *rest = prepare_batch(next(iter(loader)), device)
    args, kwargs = (rest[0], rest[1]) if rest else ((), {})
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        loss = nn.functional.mse_loss(inferer(inputs, network, *args, **kwargs), target)
        loss.backward()
        times.append(time.perf_counter() - start)
    network.zero_grad(set_to_none=True)
    return min(times[1:])


def train(network: nn.Module, task: str, items: list, args, diffusion_inferer=None) -> dict:
    """Train ``network`` for ``args.minutes`` of wall-clock time with MONAI's ``SupervisedTrainer``.

    With ``diffusion_inferer`` (a ``ConditionalDiffusionInferer``) the eps objective through
    ``ConditionalPrepareBatch``; otherwise MSE regression of the clean image from the condition.
    Returns ``{"model": EMA copy in eval mode, "iterations", "seconds"}``.
    """
    from ignite.engine import Events
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedTrainer
    from monai.handlers import LrScheduleHandler, from_engine
    from monai.inferers import SimpleInferer
    from monai.utils import set_determinism

    from monai_medgen.engines import TimeLimit, attach_ema, vdm_optimizer
    from monai_medgen.inferers import ConditionalPrepareBatch

    set_determinism(args.seed)
    device = torch.device(args.device)
    network = network.to(device)
    transform = training_transforms(task, args.crop)
    transform.set_random_state(args.seed)
    loader = DataLoader(Dataset(items, transform=transform), batch_size=args.batch_size, shuffle=True, drop_last=True)
    if diffusion_inferer is not None:
        inferer, prepare_batch = diffusion_inferer, ConditionalPrepareBatch(inferer=diffusion_inferer, condition_key="cond")
    else:
        inferer, prepare_batch = SimpleInferer(), regression_prepare_batch

    budget = args.minutes * 60
    warmup = 5 if args.quick else 100
    estimate = int(budget / _seconds_per_iteration(network, inferer, prepare_batch, loader, device))
    optimizer, lr_lambda = vdm_optimizer(
        network, lr=args.lr, warmup_steps=warmup, total_steps=max(warmup + 1, estimate), final_factor=0.02
    )
    trainer = SupervisedTrainer(
        device=device, max_epochs=1_000_000, train_data_loader=loader, network=network, optimizer=optimizer,
        loss_function=nn.MSELoss(), inferer=inferer, prepare_batch=prepare_batch,
        train_handlers=[LrScheduleHandler(torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda), epoch_level=False, print_lr=False)],
    )
    TimeLimit(budget).attach(trainer)
    ema = attach_ema(trainer, network, momentum=args.ema, warmup=warmup)
    what = "conditional DDPM" if diffusion_inferer is not None else "regression"
    log_every = 10 if args.quick else 200

    loss_of = from_engine(["loss"], first=True)  # the trainer decollates its output: one dict per example

    @trainer.on(Events.ITERATION_COMPLETED(every=log_every))
    def _log(engine):
        print(f"  [{task} {what}] iteration {engine.state.iteration}, loss {float(loss_of(engine.state.output)):.4f}", flush=True)

    start = time.perf_counter()
    trainer.run()
    seconds = time.perf_counter() - start
    print(f"  [{task} {what}] {trainer.state.iteration} iterations in {seconds / 60:.1f} min (cosine LR decay "
          f"sized for {estimate}), last loss {float(loss_of(trainer.state.output)):.4f}", flush=True)
    return {"model": ema.ema_model.eval(), "iterations": trainer.state.iteration, "seconds": seconds}


# ---------------------------------------------------------------------------------------------
# restoration with the trained models
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def restore_regression(model: nn.Module, test: TestSet, device) -> torch.Tensor:
    """Regression output in [0, 1]; the known region pasted back for inpainting (as every other method keeps it)."""
    out = torch.cat([model(c[None].to(device)).clamp(-1, 1).cpu() for c in test.cond]) * 0.5 + 0.5
    return out if test.mask is None else torch.where(test.mask.bool(), out, test.shown)


def restore_ours(
    inferer, model, test: TestSet, device, sampler: str, num_steps: int, num_samples: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample the conditional DDPM for each test slice (slice ``i`` from seed ``seed + i``): (mean, std) in
    [0, 1] units, (N, 1, H, W); the std is zero for one sample."""
    means, stds = [], []
    for i in range(len(test.truth)):
        gen = torch.Generator(device=device).manual_seed(seed + i)
        noise = torch.randn((1, *test.truth.shape[1:]), generator=gen, device=device)
        inpaint = {} if test.mask is None else {"mask": test.mask[i : i + 1], "known": test.shown[i : i + 1] * 2 - 1}
        out = inferer.sample(
            noise, model, sampler=sampler, num_steps=num_steps, condition=test.cond[i : i + 1].to(device),
            num_samples=num_samples, generator=gen, verbose=False, **inpaint,
        )
        mean, std = out if num_samples > 1 else (out, torch.zeros_like(out))
        means.append(mean.cpu() * 0.5 + 0.5)
        stds.append(std.cpu() * 0.5)
    mean = torch.cat(means)
    if test.mask is not None:  # the sampler keeps the known region exactly; undo the rounding of the unit change
        mean = torch.where(test.mask.bool(), mean, test.shown)
    return mean, torch.cat(stds)


# ---------------------------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------------------------
def _fmt(v: float, digits: int) -> str:
    return "inf" if math.isinf(v) else f"{v:.{digits}f}"


def _budget(minutes: float) -> str:
    return f"{minutes:g} min" if minutes >= 1 else f"{minutes * 60:.0f} s"


def print_table(task: str, rows: list[tuple[str, dict]], header: str) -> None:
    cols = [("psnr", "PSNR (dB)", 2), ("ssim", "SSIM", 3), ("sharpness", "rel. sharpness", 3),
            ("consistency", "data consistency (dB)", 2)]
    if task == "inpaint":
        cols.append(("hole", "PSNR in hole (dB)", 2))
    print(f"\n### {task}\n\n{header}\n")
    print("| method | " + " | ".join(c[1] for c in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for label, r in rows:
        print(f"| {label} | " + " | ".join(_fmt(r[key], d) for key, _, d in cols) + " |")


CONSISTENCY_NOTE = {
    "sr": "data consistency: the output area-downsampled to 32x32 against the 32x32 measurement "
    "(the nearest-neighbour input is exact up to float rounding).",
    "denoise": "data consistency: the output re-noised with the same noise draw (same seeds) against the noisy "
    "input; inf for a perfect restoration.",
    "inpaint": "data consistency: the known region against the input; every method here keeps it exactly (inf).",
}


def verdict(task: str, rows: list[tuple[str, dict]]) -> str:
    """The issue's acceptance target for ``task``, from the table (ours last, the classical baseline second)."""
    ours, base = rows[-1][1], rows[1][1]
    if task == "sr":
        gain, sharp = ours["psnr"] - base["psnr"], ours["sharpness"]
        met = gain >= 1.5 and abs(sharp - 1) <= 0.15
        text = f"ours - bicubic = {gain:+.2f} dB (>= +1.5), rel. sharpness {sharp:.3f} (within 15% of 1)"
    elif task == "denoise":
        gain = ours["psnr"] - base["psnr"]
        met, text = gain >= 2.0, f"ours - TV = {gain:+.2f} dB (>= +2)"
    else:
        gain = ours["hole"] - base["hole"]
        met, text = gain >= 1.0, f"ours - biharmonic inside the hole = {gain:+.2f} dB (>= +1)"
    return f"Target (issue 3): {text}: {'met' if met else 'not met'}."


def save_figure(path: str, columns: list[tuple[str, torch.Tensor]], picks: list[int]) -> str:
    """One row per picked slice, one column per (title, (N, 1, H, W) image in [0, 1]); titles on top."""
    from PIL import Image, ImageDraw

    from monai_medgen.handlers import make_grid

    tiles = torch.stack([img[i] for i in picks for _, img in columns])
    grid = make_grid(tiles, ncols=len(columns), value_range=(0.0, 1.0))
    width = (grid.shape[1] - 2) // len(columns)
    canvas = Image.new("L", (grid.shape[1], grid.shape[0] + 14), 0)
    canvas.paste(Image.fromarray(grid), (0, 14))
    draw = ImageDraw.Draw(canvas)
    for j, (title, _) in enumerate(columns):
        draw.text((2 + j * width + 2, 1), title, fill=255)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    canvas.save(path)
    return path


# ---------------------------------------------------------------------------------------------
# one task
# ---------------------------------------------------------------------------------------------
def run_task(task: str, args, train_items: list, test_truth: torch.Tensor, tuning_truth: torch.Tensor) -> None:
    from monai_medgen.inferers import ConditionalDiffusionInferer

    device = torch.device(args.device)
    channels = tuple(int(c) for c in args.channels.split(","))
    print(f"\n== {task}: training two models for {_budget(args.minutes)} each ==", flush=True)
    inferer = ConditionalDiffusionInferer(num_train_timesteps=args.train_steps)
    ours = train(diffusion_network(task, channels, args.quick), task, train_items, args, diffusion_inferer=inferer)
    regression = train(RegressionUNet(task, channels, args.quick), task, train_items, args)
    params = sum(p.numel() for p in ours["model"].parameters()) / 1e6

    test = make_test_set(task, test_truth, EVAL_SEED)
    tuning = make_test_set(task, tuning_truth, TUNE_SEED) if task == "denoise" else None
    classical = classical_rows(task, test, tuning)
    start = time.perf_counter()
    mean, std = restore_ours(inferer, ours["model"], test, device, "dpm++", args.steps, args.num_samples, args.seed)
    sample_s = time.perf_counter() - start
    input_label = {"sr": "degraded input (4x low-res, nearest)", "denoise": "degraded input (noisy)",
                   "inpaint": "degraded input (hole filled with 0)"}[task]
    rows = [
        (input_label, score(test.shown, test)),
        *[(label, score(out, test)) for label, out in classical],
        ("same network, regression (MSE)", score(restore_regression(regression["model"], test, device), test)),
        (f"ours: conditional DDPM, mean of {args.num_samples}, DPM-Solver++ {args.steps} steps", score(mean, test)),
    ]
    header = (
        f"Training: {_budget(args.minutes)} wall-clock per model on {args.device} (torch threads: "
        f"{torch.get_num_threads()}), batches of {args.batch_size} {'random crops ' if args.crop else 'slices '}"
        f"{args.crop or 128}x{args.crop or 128} from {len(train_items)} MNI152 axial slices, AdamW lr {args.lr:g}, "
        f"EMA {args.ema:g}; ours {ours['iterations']} "
        f"iterations (T = {inferer.num_train_timesteps}), regression {regression['iterations']} iterations; "
        f"U-Net channels {channels} ({params:.2f} M parameters). Test: {len(test_truth)} Colin27 axial slices, "
        f"128x128, fixed seeds{' and masks' if task == 'inpaint' else ''}; sampling ours took {sample_s:.0f} s."
    )
    print_table(task, rows, header)
    print(f"\n{CONSISTENCY_NOTE[task]} Sharpness: RMS Sobel gradient relative to the truth. {verdict(task, rows)}")
    inside = test.mask.bool() if test.mask is not None else torch.ones_like(std, dtype=torch.bool)
    where = "inside the hole" if test.mask is not None else "over the slice"
    print(f"\nUncertainty (per-pixel std of the {args.num_samples} samples, [0, 1] units) {where}: "
          f"mean {float(std[inside].mean()):.4f}")

    # quality against network evaluations: one sample per slice from the same starting noise
    settings = ([("ancestral", inferer.num_train_timesteps)] if args.full_chain else []) + list(NFE_SETTINGS)
    sub = test.first(min(args.nfe_slices, len(test_truth)))
    print(f"\nQuality against network evaluations ({len(sub.truth)} slices, one sample each, same starting noise):\n")
    extra = " PSNR in hole (dB) |" if task == "inpaint" else ""
    print(f"| sampler | network evaluations | PSNR (dB) |{extra} seconds |")
    print("|---|---|---|" + ("---|" if extra else "") + "---|")
    nfe_psnr = {}
    for sampler, steps in settings:
        if steps > inferer.num_train_timesteps:
            print(f"| {sampler} | {steps} | (more steps than T = {inferer.num_train_timesteps}) |" + (" |" if extra else "") + " |")
            continue
        t0 = time.perf_counter()
        one, _ = restore_ours(inferer, ours["model"], sub, device, sampler, steps, 1, args.seed)
        r = score(one, sub)
        nfe_psnr[sampler, steps] = r["psnr"]
        hole = f" {r['hole']:.2f} |" if extra else ""
        print(f"| {sampler} | {steps} | {r['psnr']:.2f} |{hole} {time.perf_counter() - t0:.1f} |", flush=True)
    full = nfe_psnr.get(("ancestral", inferer.num_train_timesteps))
    fast = [v for (sampler, steps), v in nfe_psnr.items() if sampler == "dpm++" and steps <= 25]
    if full is not None and fast:
        gap = full - max(fast)
        print(f"\nTarget (issue 3): best DPM-Solver++ (<= 25 steps) is {gap:.2f} dB below the full ancestral chain "
              f"(<= 0.5): {'met' if gap <= 0.5 else 'not met'}.")

    picks = sorted({int(round(v)) for v in np.linspace(0, len(test_truth) - 1, min(3, len(test_truth)))})
    shown_std = std / max(float(std.max()), 1e-8)
    path = save_figure(
        os.path.join(args.figure_dir, f"conditional_{task}.png"),
        [("input", test.shown.clamp(0, 1)), ("ours", mean), (classical[0][0].split(" (")[0], classical[0][1]),
         ("truth", test.truth), ("uncertainty", shown_std)],
        picks,
    )
    print(f"\nFigure: {path} (uncertainty scaled to its maximum, {float(std.max()):.3f})")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset of sr,denoise,inpaint")
    p.add_argument("--minutes", type=float, help=f"training wall-clock budget per model (default {FULL['minutes']:g})")
    p.add_argument("--train-steps", type=int, default=None, help="T of the linear-beta DDPM table (default 2000)")
    p.add_argument("--channels", help=f"U-Net channels per level, both models (default {FULL['channels']})")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--crop", type=int, default=None, help="train on random crops of this size (default: whole 128x128)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ema", type=float, default=1e-2, help="EMA momentum (weight of the new parameters)")
    p.add_argument("--eval-slices", type=int, help=f"Colin27 test slices (default {FULL['eval_slices']})")
    p.add_argument("--num-samples", type=int, help=f"samples averaged per slice (default {FULL['num_samples']})")
    p.add_argument("--steps", type=int, help=f"DPM-Solver++ steps for the main table (default {FULL['steps']})")
    p.add_argument("--nfe-slices", type=int, help=f"slices of the NFE table (default {FULL['nfe_slices']})")
    p.add_argument("--full-chain", action="store_true", help="add the ancestral sampler over all T steps (slow)")
    p.add_argument("--figure-dir", default="docs/benchmarks")
    p.add_argument("--quick", action="store_true", help="smoke run: " + ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in QUICK.items()))
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown or not tasks:
        p.error(f"--tasks must be a comma-separated subset of {','.join(TASKS)}, got {args.tasks!r}.")
    if args.num_samples < 2:
        p.error("--num-samples must be at least 2 (the uncertainty map is their standard deviation).")

    from monai_medgen.data import demo_slices

    train_items = demo_slices("mni152", size=128)
    tuning_truth = torch.as_tensor(np.stack([d["image"] for d in demo_slices("mni152", size=128, num_slices=16)]))
    test_truth = torch.as_tensor(np.stack([d["image"] for d in demo_slices("colin27", size=128, num_slices=args.eval_slices)]))
    print(f"data: {len(train_items)} MNI152 training slices, {len(test_truth)} held-out Colin27 slices, 128x128")
    for task in tasks:
        run_task(task, args, train_items, test_truth, tuning_truth)


if __name__ == "__main__":
    main()
