"""Held-out bits/dim: our VDM against lossless codecs and MONAI's DDPM bound, at the same training budget.

    python scripts/benchmark_vdm.py --minutes 30 --parallel

Both models train on MNI152 axial slices (128x128, random 64x64 crops, left-right flips) for the same
wall-clock budget with the same U-Net body (MONAI ``DiffusionModelUNet``, same channels), the same optimiser,
LR schedule and EMA, in MONAI's ``SupervisedTrainer``; they are scored on held-out Colin27 axial slices at
full 128x128:

- ours: ``VDMInferer`` (learned linear schedule, continuous time) with ``ScoreUNet`` (Fourier features and
  the grid skip), exact bound with ``bits_per_dim``;
- MONAI: ``DDPMScheduler`` (T = 1000, linear betas) + ``DiffusionInferer`` + MONAI's ``DiffusionPrepareBatch``;
  ``DiffusionInferer.get_likelihood`` (nats/dim, no prior term) converted to bits/dim with the prior
  ``KL(q(x_T | x) || N(0, I))`` added.  It makes 1000 network calls per image, so it scores an evenly spaced
  subset (``--monai-slices``); the same DDPM is also scored on every slice by our estimator of its T-step
  bound (``VDMInferer(DiscreteSchedule.from_scheduler(...), num_discrete_steps=1000)`` through
  ``TimestepAdapter``, stratified time samples);
- lossless codecs of the same 8-bit slices: PNG (PIL, maximum compression) and, with ``imagecodecs`` (the ``ood``
  extra), JPEG-LS, JPEG 2000 (reversible) and JPEG-XL (lossless, effort 9), the strongest of them.

With ``--parallel`` the two trainings run side by side, one thread each (each gets one core of the two);
otherwise one after the other with all threads.  Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

CHANNELS = (16, 32, 64)


def _data(eval_slices: int):
    from monai_medgen.data import demo_slices

    train = demo_slices("mni152", size=128)
    test = np.stack([d["image"] for d in demo_slices("colin27", size=128, num_slices=eval_slices)])
    return train, test


def run_vdm(args) -> dict:
    from monai_medgen.engines import build_vdm_trainer, evaluate_bpd
    from monai_medgen.inferers import VDMInferer
    from monai_medgen.networks import ScoreUNet
    from monai_medgen.schedules import LearnedLinearSchedule

    train, test = _data(args.eval_slices)
    net = ScoreUNet(2, 1, channels=CHANNELS, num_res_blocks=1, norm_num_groups=8, num_head_channels=16, grid_levels=256)
    inferer = VDMInferer(LearnedLinearSchedule())
    trainer, ema = build_vdm_trainer(
        train,
        net,
        inferer,
        batch_size=args.batch_size,
        max_seconds=args.minutes * 60,
        crop_size=args.crop,
        lr=args.lr,
        warmup_steps=100,
        total_steps=args.total_steps,
        seed=args.seed,
        log_every=100,
        ema_momentum=args.ema,
    )
    t0 = time.time()
    trainer.run()
    train_s = time.time() - t0
    torch.set_num_threads(args.eval_threads)
    t1 = time.time()
    res = evaluate_bpd(inferer, ema.ema_model, test, num_time_samples=args.time_samples, seed=args.seed)
    sub = evaluate_bpd(
        inferer,
        ema.ema_model,
        test[_subset(len(test), args.monai_slices)],
        num_time_samples=args.time_samples,
        seed=args.seed,
    )
    g0, g1 = (float(v) for v in inferer.schedule.endpoints())
    return {
        "model": "VDM (ours)",
        "iterations": trainer.state.iteration,
        "train_s": train_s,
        "eval_s": time.time() - t1,
        "bpd": res["bpd"],
        "bpd_subset": sub["bpd"],
        "diffusion": res["diffusion"],
        "prior": res["prior"],
        "reconstruction": res["reconstruction"],
        "note": f"learned gamma in [{g0:.2f}, {g1:.2f}], {args.time_samples} time samples",
    }


def run_ddpm(args) -> dict:
    from monai.data import DataLoader, Dataset
    from monai.engines import DiffusionPrepareBatch, SupervisedTrainer
    from monai.handlers import LrScheduleHandler
    from monai.inferers import DiffusionInferer
    from monai.networks.nets import DiffusionModelUNet
    from monai.networks.schedulers import DDPMScheduler
    from monai.utils import set_determinism

    from monai_medgen.engines import TimeLimit, attach_ema, evaluate_bpd, slice_training_transforms, vdm_optimizer
    from monai_medgen.inferers import VDMInferer
    from monai_medgen.inferers.vdm import from_levels, prior_kl, to_levels
    from monai_medgen.networks import TimestepAdapter
    from monai_medgen.schedules import DiscreteSchedule

    set_determinism(args.seed)
    train, test = _data(args.eval_slices)
    net = DiffusionModelUNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=CHANNELS,
        num_res_blocks=1,
        attention_levels=(False,) * len(CHANNELS),
        norm_num_groups=8,
        num_head_channels=16,
    )
    scheduler = DDPMScheduler(num_train_timesteps=1000, schedule="linear_beta")
    inferer = DiffusionInferer(scheduler)
    loader = DataLoader(
        Dataset(train, transform=slice_training_transforms(args.crop)),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
    )
    optimizer, lr_lambda = vdm_optimizer(net, lr=args.lr, warmup_steps=100, total_steps=args.total_steps)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=100_000,
        train_data_loader=loader,
        network=net,
        optimizer=optimizer,
        loss_function=torch.nn.MSELoss(),
        inferer=inferer,
        prepare_batch=DiffusionPrepareBatch(num_train_timesteps=1000),
        train_handlers=[
            LrScheduleHandler(
                torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda), epoch_level=False, print_lr=False
            )
        ],
    )
    TimeLimit(args.minutes * 60).attach(trainer)
    ema = attach_ema(trainer, net, momentum=args.ema)
    t0 = time.time()
    trainer.run()
    train_s = time.time() - t0
    model = ema.ema_model.eval()
    torch.set_num_threads(args.eval_threads)
    t1 = time.time()
    # the same 8-bit data the VDM sees, as MONAI expects it in [-1, 1]
    x = from_levels(to_levels(torch.as_tensor(test) * 2 - 1), centres=False)
    subset = _subset(len(x), args.monai_slices)
    nll = []
    with torch.no_grad():
        for i in range(0, len(subset), args.batch_size):
            xb = x[subset[i : i + args.batch_size]]
            nats = inferer.get_likelihood(
                xb,
                model,
                scheduler=scheduler,
                save_intermediates=False,
                verbose=False,
                original_input_range=(0, 255),
                scaled_input_range=(-1, 1),
            )
            nll.append(torch.as_tensor(nats).reshape(-1))
    monai_s = time.time() - t1
    nats_per_dim = torch.cat(nll)  # MONAI: sum over the T steps of per-dim means, no prior term
    schedule = DiscreteSchedule.from_scheduler(scheduler)
    prior = prior_kl(x[subset], schedule(torch.tensor(1.0))) / x[0].numel()
    monai_bpd = (nats_per_dim + prior) / math.log(2)
    # the same network scored by our estimator of the T-step bound on all slices
    ours = evaluate_bpd(
        VDMInferer(schedule, num_discrete_steps=1000),
        TimestepAdapter(model, schedule),
        test,
        num_time_samples=args.time_samples,
        seed=args.seed,
    )
    return {
        "model": "MONAI DDPM",
        "iterations": trainer.state.iteration,
        "train_s": train_s,
        "eval_s": monai_s,
        "bpd_subset": float(monai_bpd.mean()),
        "bpd_ours": ours["bpd"],
        "prior": float((prior / math.log(2)).mean()),
        "note": "T = 1000 linear betas",
    }


def _subset(n: int, k: int) -> list[int]:
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, min(k, n))})


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--parallel", action="store_true", help="train the two models side by side, one thread each")
    p.add_argument("--models", default="vdm,ddpm")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--total-steps", type=int, default=2500, help="length of the cosine LR decay")
    p.add_argument("--ema", type=float, default=1e-2, help="EMA momentum (weight of the new parameters)")
    p.add_argument("--eval-threads", type=int, default=2)
    p.add_argument("--eval-slices", type=int, default=16)
    p.add_argument("--time-samples", type=int, default=32)
    p.add_argument(
        "--monai-slices", type=int, default=4, help="slices scored by MONAI's get_likelihood (1000 network calls each)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", choices=["vdm", "ddpm"], help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        res = {"vdm": run_vdm, "ddpm": run_ddpm}[args.worker](args)
        with open(args.out, "w") as f:
            json.dump(res, f)
        return

    from monai_medgen.bundle.workflow import CODEC_NAMES
    from monai_medgen.metrics import available_codecs, codec_bits_per_dim

    _, test = _data(args.eval_slices)
    sub = test[_subset(len(test), args.monai_slices)]
    rows = [
        {
            "model": f"lossless {CODEC_NAMES[codec]} (8-bit)",
            "bpd": codec_bits_per_dim(test, codec),
            "bpd_subset": codec_bits_per_dim(sub, codec),
            "note": "same slices" if codec == "png" else "same slices (imagecodecs)",
        }
        for codec in available_codecs()
    ]
    models = [m for m in args.models.split(",") if m]
    tmp = tempfile.mkdtemp()
    procs = []
    passthrough = [a for a in sys.argv[1:] if a != "--parallel"]
    for m in models:
        out = os.path.join(tmp, f"{m}.json")
        env = dict(os.environ)
        if args.parallel:
            env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        cmd = [sys.executable, __file__, *passthrough, "--worker", m, "--out", out]
        proc = subprocess.Popen(cmd, env=env)
        if not args.parallel:
            proc.wait()
        procs.append((proc, out))
    for proc, out in procs:
        if proc.wait() != 0:
            raise SystemExit(f"worker failed: {' '.join(proc.args)}")
        with open(out) as f:
            rows.append(json.load(f))

    threads = (
        "1 thread each, side by side" if args.parallel else f"{torch.get_num_threads()} threads, one after the other"
    )
    print(
        f"\nTraining budget: {args.minutes:g} min wall-clock per model ({threads}), batch {args.batch_size} of "
        f"{args.crop}x{args.crop} crops of 128x128 MNI152 axial slices; held-out: {args.eval_slices} Colin27 axial slices, 128x128.\n"
    )
    n, k = len(test), len(sub)
    print(
        f"| model | bits/dim, {n} slices (our bound) | bits/dim, {k}-slice subset (MONAI get_likelihood + prior for the DDPM) | iterations | train min | MONAI eval min | note |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        full = r.get("bpd", r.get("bpd_ours"))
        it = r.get("iterations", "")
        tr = f"{r['train_s'] / 60:.1f}" if "train_s" in r else ""
        ev = f"{r['eval_s'] / 60:.1f}" if r["model"] == "MONAI DDPM" else ""
        print(f"| {r['model']} | {full:.3f} | {r['bpd_subset']:.3f} | {it} | {tr} | {ev} | {r.get('note', '')} |")
    vdm = next((r for r in rows if r["model"].startswith("VDM")), None)
    if vdm is not None:
        print(
            f"\nVDM terms (bits/dim): diffusion {vdm['diffusion']:.3f}, prior {vdm['prior']:.5f}, reconstruction {vdm['reconstruction']:.4f}"
        )


if __name__ == "__main__":
    main()
