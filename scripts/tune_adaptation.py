"""Choose the denoising bundle's test-time adaptation (``adapt_steps``, ``adapt_lr``) on training-source images.

The images are never panel images: the MNI152 T1 slice every classical baseline is tuned on and the spin-echo T2
and PD contrasts simulated from it (``monai_medgen.tasks.panel._spin_echo``, as the panel simulates Colin27's),
each with the panel's Gaussian 0.1 + 5% salt-and-pepper.  For each learning rate the adaptation runs in chunks of
``--chunk`` steps (each chunk continues from the last one's network with a fresh optimiser) and one sample is
scored after every chunk (PSNR / SSIM against the clean slice; the truth is used for scoring only).

    python scripts/tune_adaptation.py                       # lr 3e-3 and 1e-2, 20 / 40 / 60 steps
    python scripts/tune_adaptation.py --lrs 3e-3 --chunks 2 --output bundles/cddpm_denoising_2d/docs/tune_adaptation_log.txt
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from monai_medgen.metrics import ssim
from monai_medgen.tasks.evaluation import degrade, psnr_db
from monai_medgen.tasks.loading import load_restoration_bundle
from monai_medgen.tasks.panel import _spin_echo, tuning_image
from monai_medgen.tasks.sampling import ResidualRestorer

ROOT = Path(__file__).resolve().parents[1]


def _score(restorer, y, truth) -> str:
    out, _ = restorer(y, generator=torch.Generator().manual_seed(7), value_range=(0.0, 1.0))
    out = out.clamp(0, 1)
    return f"{psnr_db(out, truth):.2f} / {float(ssim(out, truth).mean()):.3f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default=str(ROOT / "bundles" / "cddpm_denoising_2d"))
    p.add_argument("--lrs", nargs="+", type=float, default=[3e-3, 1e-2])
    p.add_argument("--chunk", type=int, default=20, help="adaptation steps between two scores")
    p.add_argument("--chunks", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", default=None, help="also write the table here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    bundle = load_restoration_bundle(Path(args.bundle))
    t1 = tuning_image()
    t1_np = t1[0, 0].numpy()
    images = {
        "mni152_t1": t1,
        "mni152_t2_sim": torch.as_tensor(_spin_echo(t1_np, 4000.0, 100.0))[None, None].float(),
        "mni152_pd_sim": torch.as_tensor(_spin_echo(t1_np, 4000.0, 15.0))[None, None].float(),
    }
    steps = [args.chunk * (k + 1) for k in range(args.chunks)]
    lines = [
        "PSNR (dB) / SSIM of one sample (2 network calls) after K adaptation steps; Gaussian 0.1 + 5% salt-and-pepper",
        "",
        "| image | lr | K = 0 | " + " | ".join(f"K = {k}" for k in steps) + " | seconds |",
        "|---|---|---|" + "---|" * len(steps) + "---|",
    ]
    for name, truth in images.items():
        y, _ = degrade("denoise_gsp", truth, seed=7)
        plain = ResidualRestorer(bundle.inferer, bundle.network, "denoise", num_steps=2, adapt_steps=0)
        before = _score(plain, y, truth)
        for lr in args.lrs:
            current = ResidualRestorer(
                bundle.inferer, bundle.network, "denoise", num_steps=2, adapt_steps=args.chunk, adapt_lr=lr
            )
            scores, t0 = [], time.perf_counter()
            for k in range(args.chunks):
                current.adapt_steps = args.chunk
                current = current.adapted(y, (0.0, 1.0), seed=99 + k)
                scores.append(_score(current, y, truth))
            lines.append(
                f"| {name} | {lr:g} | {before} | " + " | ".join(scores) + f" | {time.perf_counter() - t0:.0f} |"
            )
            print(lines[-1], flush=True)
    text = "\n".join(lines)
    print("\n" + text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
