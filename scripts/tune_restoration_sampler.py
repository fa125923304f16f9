"""Choose a restoration bundle's sampler settings (start time, network calls) on training data, never on the panel.

Scores one sample and the mean of 4 on the MNI152 tuning slice (monai_medgen.tasks.panel.tuning_image) for a grid of
start times and step counts and prints a table; the bundle's inference.yaml takes the best one-sample setting.

    python scripts/tune_restoration_sampler.py --scenario sr4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from monai_medgen.metrics import ssim
from monai_medgen.tasks.evaluation import BUNDLES, SCENARIOS, degrade, psnr_db
from monai_medgen.tasks.loading import load_restoration_bundle, newest_checkpoint
from monai_medgen.tasks.panel import tuning_image
from monai_medgen.tasks.sampling import ResidualRestorer

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", default="sr4", choices=list(SCENARIOS))
    p.add_argument("--start-times", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.35, 0.5])
    p.add_argument("--steps", type=int, nargs="+", default=[2, 4])
    p.add_argument(
        "--from-checkpoints",
        action="store_true",
        help="use the newest training checkpoint under <bundle>/runs/checkpoints (EMA) instead of models/model.pt",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    family = SCENARIOS[args.scenario]
    folder = ROOT / "bundles" / BUNDLES[family]
    bundle = load_restoration_bundle(folder, newest_checkpoint(folder) if args.from_checkpoints else None)
    truth = tuning_image()
    measured, extra = degrade(args.scenario, truth, seed=7)
    project = (lambda x: extra["op"].project(x, extra["low"])) if args.scenario == "sr4" else None
    print(f"{bundle.name} on the MNI152 tuning slice ({args.scenario})\n")
    print(
        "| start time | steps | PSNR (1 sample) | SSIM (1 sample) | PSNR (mean of 4) | SSIM (mean of 4) |\n|---|---|---|---|---|---|"
    )
    for steps in args.steps:
        for start in args.start_times:
            r = ResidualRestorer(bundle.inferer, bundle.network, family, num_steps=steps, start_time=start)
            cells = []
            for n in (1, 4):
                out, _ = r(
                    measured,
                    project=project,
                    mask=extra.get("mask"),
                    num_samples=n,
                    generator=torch.Generator().manual_seed(0),
                )
                out = out.clamp(0, 1)
                cells += [
                    f"{psnr_db(out, truth, extra.get('mask')):.2f}",  # inpainting: in the hole
                    f"{float(ssim(out, truth).mean()):.3f}",
                ]
            print(f"| {start} | {steps} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
