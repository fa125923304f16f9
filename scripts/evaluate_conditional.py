"""Conditional DDPM restoration against classical methods and a regression network (issue 3, deliverable 5).

Measures the fixed-degradation, mask-conditioned formulation of ``monai_medgen.restoration`` (today the
``cddpm_inpainting_2d`` bundle).  The blind residual bundles (``cddpm_super_resolution_2d``, ``cddpm_denoising_2d``,
``cddpm_super_resolution_3d``) are measured on the unseen panel by ``scripts/evaluate_restoration.py``.

    # 1. train the three restoration bundles on the demo data (MNI152 slices), each with its own train.yaml
    python -m monai.bundle run --config_file "$(python -m monai_medgen.bundle.configs bundles/cddpm_super_resolution_2d)" \
        --bundle_root bundles/cddpm_super_resolution_2d      # likewise cddpm_denoising_2d, cddpm_inpainting_2d
    # 2. train the regression baselines (same network body, same data, batch and iterations) and evaluate
    python scripts/evaluate_conditional.py --tasks sr,denoise,inpaint --full-chain

Tasks (``monai_medgen.restoration``), 128x128 brain slices in [0, 1]: ``sr`` 4x super-resolution (area
downsampling; the condition is the bicubic image on the 128 grid), ``denoise`` Gaussian sigma 0.1 plus 5%
salt-and-pepper, ``inpaint`` a central 32x32 hole at test time (random boxes in training; mask-conditioned model).

Ours is the bundle's trained model (``models/model.pt``: EMA weights of its ``train.yaml`` run, whose iteration
count is stored in the file).  "Same network, regression" is the same MONAI ``DiffusionModelUNet`` body (same
channels, blocks, attention) fed only the condition with its timestep fixed to 0, trained by MSE to output the
clean image, in MONAI's ``SupervisedTrainer`` with the bundle's transform chain, batch size, crop, optimiser,
LR schedule, EMA and the same number of iterations; it is cached in ``--regression-dir``.

Evaluation on held-out Colin27 axial slices with fixed noise seeds and masks: PSNR, SSIM, sharpness relative to
the truth (RMS Sobel gradient) and data consistency (output degraded again against the measurement), for the
degraded input, classical baselines (bicubic; TV and non-local means tuned on MNI152 slices; biharmonic), the
regression network and ours (mean of ``--num-samples`` DPM-Solver++ samples; their standard deviation is the
uncertainty map).  A second table gives PSNR against network evaluations (one sample per slice, same starting
noise) for DDIM 50, DPM-Solver++ 10/20/25 and, with ``--full-chain``, the ancestral sampler over all T steps.
A PNG per task (``<figure-dir>/conditional_<task>.png``): input, ours, baseline, truth, uncertainty.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from torch import nn

from monai_medgen.bundle.configs import train_config_files

BUNDLES = {"sr": "cddpm_super_resolution_2d", "denoise": "cddpm_denoising_2d", "inpaint": "cddpm_inpainting_2d"}
NFE_SETTINGS = (("ddim", 50), ("dpm++", 10), ("dpm++", 20), ("dpm++", 25))


def load_bundle(bundle_dir: str, device, weights: bool = True):
    """(parser, network with the trained EMA weights, inferer, info) of a restoration bundle (``weights=False``:
    the untrained network and no info)."""
    from monai.bundle import ConfigParser

    from monai_medgen.bundle import load_model

    parser = ConfigParser()
    parser.read_config(train_config_files(bundle_dir))
    parser["bundle_root"] = bundle_dir
    parser["device"] = str(device)
    network = parser.get_parsed_content("network_def").to(device)
    inferer = parser.get_parsed_content("inferer")
    info = load_model(os.path.join(bundle_dir, "models", "model.pt"), network, map_location=device) if weights else {}
    return parser, network.eval(), inferer, info


class RegressionUNet(nn.Module):
    """The same network, regression: the ``DiffusionModelUNet`` body of the bundle's ``ScoreUNet`` (same
    channels, blocks, attention, groups), fed the condition only, timestep fixed to 0; outputs the clean image
    in [-1, 1].  Input (B, cond_channels, H, W)."""

    def __init__(self, cond_channels: int, channels, num_res_blocks, norm_num_groups, num_head_channels):
        super().__init__()
        from monai.networks.nets import DiffusionModelUNet

        self.unet = DiffusionModelUNet(
            2,
            int(cond_channels),
            1,
            channels=tuple(channels),
            num_res_blocks=num_res_blocks,
            attention_levels=(False,) * len(channels),
            norm_num_groups=norm_num_groups,
            num_head_channels=num_head_channels,
        )

    @classmethod
    def like(cls, parser) -> RegressionUNet:
        """The regression twin of the bundle's ``network_def`` (a ``ScoreUNet`` without attention levels)."""
        keys = ("cond_channels", "channels", "num_res_blocks", "norm_num_groups", "num_head_channels")
        return cls(*(parser.get_parsed_content(f"network_def#{k}") for k in keys))

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        timesteps = torch.zeros(condition.shape[0], dtype=torch.long, device=condition.device)
        return self.unet(condition, timesteps)


def regression_prepare_batch(batchdata, device=None, non_blocking: bool = False, **kwargs):
    """``SupervisedTrainer`` batch for the regression network: input the condition, target the clean image."""
    cond = torch.as_tensor(batchdata["cond"]).to(device=device, non_blocking=non_blocking, **kwargs)
    image = torch.as_tensor(batchdata["image"]).to(device=device, non_blocking=non_blocking, **kwargs)
    return cond, image


def train_regression(parser, network: nn.Module, iterations: int, device, log_every: int = 200) -> dict:
    """Train ``network`` by MSE with the bundle's data, transforms, batch, optimiser, LR schedule and EMA for
    ``iterations`` steps in MONAI's ``SupervisedTrainer``; returns ``{"model", "iterations", "seconds"}``."""
    from ignite.engine import Events
    from monai.engines import SupervisedTrainer
    from monai.handlers import LrScheduleHandler
    from monai.inferers import SimpleInferer
    from monai.utils import set_determinism

    from monai_medgen.engines import attach_ema, vdm_optimizer

    set_determinism(int(parser["seed"]))
    loader = parser.get_parsed_content("train_loader")
    warmup = int(parser["warmup_steps"])
    optimizer, lr_lambda = vdm_optimizer(
        network, lr=float(parser["lr"]), warmup_steps=warmup, total_steps=max(warmup + 1, iterations), final_factor=0.02
    )
    epoch_length = min(len(loader), iterations)
    trainer = SupervisedTrainer(
        device=device,
        max_epochs=-(-iterations // epoch_length),
        epoch_length=epoch_length,
        train_data_loader=loader,
        network=network.to(device),
        optimizer=optimizer,
        loss_function=nn.MSELoss(),
        inferer=SimpleInferer(),
        prepare_batch=regression_prepare_batch,
        decollate=False,
        train_handlers=[
            LrScheduleHandler(
                torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda), epoch_level=False, print_lr=False
            )
        ],
    )
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=iterations), lambda e: e.terminate())
    ema = attach_ema(trainer, network, momentum=float(parser["ema_momentum"]), warmup=100)

    def loss_of(output) -> float:  # decollate=False: one dict for the batch
        return float(output["loss"])

    @trainer.on(Events.ITERATION_COMPLETED(every=log_every))
    def _log(engine):
        print(f"  [regression] iteration {engine.state.iteration}, loss {loss_of(engine.state.output):.4f}", flush=True)

    start = time.perf_counter()
    trainer.run()
    seconds = time.perf_counter() - start
    print(f"  [regression] {trainer.state.iteration} iterations in {seconds / 60:.1f} min", flush=True)
    return {"model": ema.ema_model.eval(), "iterations": trainer.state.iteration, "seconds": seconds}


def regression_model(task: str, parser, iterations: int, args, device) -> nn.Module:
    """The cached regression baseline of ``task``, trained now if missing (or with ``--retrain``)."""
    from monai_medgen.io import atomic_torch_save, safe_torch_load

    path = os.path.join(args.regression_dir, f"{task}.pt")
    model = RegressionUNet.like(parser)
    if os.path.isfile(path) and not args.retrain:
        state = safe_torch_load(path)
        if state.get("iterations") == iterations:
            model.load_state_dict(state["network"])
            print(
                f"  regression baseline loaded from {path} ({iterations} iterations, {state['seconds'] / 60:.1f} min)"
            )
            return model.to(device).eval()
    print(f"  training the regression baseline for {iterations} iterations", flush=True)
    out = train_regression(parser, model, iterations, device)
    os.makedirs(args.regression_dir, exist_ok=True)
    state = {
        "network": {k: v.cpu() for k, v in out["model"].state_dict().items()},
        "iterations": iterations,
        "seconds": out["seconds"],
    }
    atomic_torch_save(state, path)
    return out["model"].to(device).eval()


@torch.no_grad()
def restore_regression(model: nn.Module, test, device) -> torch.Tensor:
    """Regression output in [0, 1]; the known region pasted back for inpainting (as every other method keeps it)."""
    out = torch.cat([model(c[None].to(device)).clamp(-1, 1).cpu() for c in test.cond]) * 0.5 + 0.5
    return out if test.mask is None else torch.where(test.mask.bool(), out, test.shown)


def verdict(task: str, rows) -> str:
    """The issue's acceptance target for ``task`` (ours last, the reference classical baseline second)."""
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


def save_figure(path: str, columns, picks) -> str:
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


CONSISTENCY_NOTE = {
    "sr": "data consistency: the output area-downsampled to 32x32 against the 32x32 measurement.",
    "denoise": "data consistency: the output re-noised with the same noise draw (same seeds) against the noisy "
    "input; inf for a perfect restoration.",
    "inpaint": "data consistency: the known region against the input; every method here keeps it exactly (inf).",
}


def run_task(task: str, args) -> None:
    from monai_medgen.restoration import evaluate_model, restore_slices, score

    device = torch.device(args.device)
    bundle = os.path.join(args.bundles_dir, BUNDLES[task])
    parser, network, inferer, info = load_bundle(bundle, device)
    iterations = int(info.get("iteration", 0))
    print(f"\n== {task}: {BUNDLES[task]} ({iterations} training iterations) ==", flush=True)
    regression = regression_model(task, parser, args.regression_iterations or iterations, args, device)
    params = sum(p.numel() for p in network.parameters()) / 1e6
    header = (
        f"Training (both models): MNI152 axial slices, random {parser['crop_size']}x{parser['crop_size']} crops, "
        f"batch {parser['batch_size']}, {iterations} iterations, AdamW lr {parser['lr']} with warm-up and cosine "
        f"decay, EMA {parser['ema_momentum']} (the bundle's train.yaml); ours T = {inferer.num_train_timesteps}, "
        f"U-Net channels {tuple(parser['network_def']['channels'])} ({params:.2f} M parameters). "
        f"Test: {args.eval_slices} Colin27 axial slices, 128x128, fixed seeds"
        f"{' and masks' if task == 'inpaint' else ''}."
    )
    print(f"\n### {task}\n\n{header}\n")
    res = evaluate_model(
        network,
        inferer,
        task,
        num_slices=args.eval_slices,
        num_samples=args.num_samples,
        sampler="dpm++",
        num_steps=args.steps,
        seed=args.seed,
        device=device,
        extra_rows=[("same network, regression (MSE)", lambda t: restore_regression(regression, t, device))],
    )
    rows, test, std = res["rows"], res["test"], res["std"]
    print(
        f"\nSampling ours took {res['seconds']:.0f} s. {CONSISTENCY_NOTE[task]} Sharpness: RMS Sobel gradient "
        f"relative to the truth. {verdict(task, rows)}"
    )
    inside = test.mask.bool() if test.mask is not None else torch.ones_like(std, dtype=torch.bool)
    where = "inside the hole" if test.mask is not None else "over the slice"
    print(
        f"\nUncertainty (per-pixel std of the {args.num_samples} samples, [0, 1] units) {where}: "
        f"mean {float(std[inside].mean()):.4f}",
        flush=True,
    )

    settings = ([("ancestral", inferer.num_train_timesteps)] if args.full_chain else []) + list(NFE_SETTINGS)
    sub = test.first(min(args.nfe_slices, len(test.truth)))
    print(f"\nQuality against network evaluations ({len(sub.truth)} slices, one sample each, same starting noise):\n")
    extra = " PSNR in hole (dB) |" if task == "inpaint" else ""
    print(f"| sampler | network evaluations | PSNR (dB) |{extra} seconds |")
    print("|---|---|---|" + ("---|" if extra else "") + "---|")
    nfe_psnr = {}
    for sampler, steps in settings:
        t0 = time.perf_counter()
        one, _ = restore_slices(inferer, network, sub, sampler, steps, 1, args.seed, device=device)
        r = score(one, sub)
        nfe_psnr[sampler, steps] = r["psnr"]
        hole = f" {r['hole']:.2f} |" if extra else ""
        print(f"| {sampler} | {steps} | {r['psnr']:.2f} |{hole} {time.perf_counter() - t0:.1f} |", flush=True)
    full = nfe_psnr.get(("ancestral", inferer.num_train_timesteps))
    fast = [v for (sampler, steps), v in nfe_psnr.items() if sampler == "dpm++" and steps <= 25]
    if full is not None and fast:
        gap = full - max(fast)
        print(
            f"\nTarget (issue 3): best DPM-Solver++ (<= 25 steps) is {gap:.2f} dB below the full ancestral chain "
            f"(<= 0.5): {'met' if gap <= 0.5 else 'not met'}."
        )

    picks = sorted({int(round(v)) for v in np.linspace(0, len(test.truth) - 1, min(3, len(test.truth)))})
    shown_std = std / max(float(std.max()), 1e-8)
    classical = res["classical"][0]
    path = save_figure(
        os.path.join(args.figure_dir, f"conditional_{task}.png"),
        [
            ("input", test.shown.clamp(0, 1)),
            ("ours", res["mean"]),
            (classical[0].split(" (")[0], classical[1]),
            ("truth", test.truth),
            ("uncertainty", shown_std),
        ],
        picks,
    )
    print(f"\nFigure: {path} (uncertainty scaled to its maximum, {float(std.max()):.3f})", flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default=",".join(BUNDLES), help="comma-separated subset of sr,denoise,inpaint")
    p.add_argument("--bundles-dir", default="bundles", help="folder holding the three restoration bundles")
    p.add_argument("--regression-dir", default="runs/regression", help="cache of the trained regression baselines")
    p.add_argument("--regression-iterations", type=int, default=None, help="default: the bundle's iterations")
    p.add_argument("--retrain", action="store_true", help="train the regression baselines again")
    p.add_argument("--regression-only", action="store_true", help="only train (and cache) the regression baselines")
    p.add_argument("--eval-slices", type=int, default=16, help="Colin27 test slices")
    p.add_argument("--num-samples", type=int, default=8, help="samples averaged per slice (>= 2)")
    p.add_argument("--steps", type=int, default=20, help="DPM-Solver++ steps of the main table")
    p.add_argument("--nfe-slices", type=int, default=4, help="slices of the network-evaluation table")
    p.add_argument("--full-chain", action="store_true", help="add the ancestral sampler over all T steps (slow)")
    p.add_argument("--figure-dir", default="docs/benchmarks")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = sorted(set(tasks) - set(BUNDLES))
    if unknown or not tasks:
        p.error(f"--tasks must be a comma-separated subset of {','.join(BUNDLES)}, got {args.tasks!r}.")
    if args.num_samples < 2:
        p.error("--num-samples must be at least 2 (the uncertainty map is their standard deviation).")
    print(f"torch threads: {torch.get_num_threads()}, device: {args.device}")
    for task in tasks:
        if args.regression_only:
            bundle = os.path.join(args.bundles_dir, BUNDLES[task])
            parser, _, _, info = load_bundle(bundle, args.device, weights=args.regression_iterations is None)
            regression_model(
                task,
                parser,
                args.regression_iterations or int(info.get("iteration", 0)),
                args,
                torch.device(args.device),
            )
        else:
            run_task(task, args)


if __name__ == "__main__":
    main()
