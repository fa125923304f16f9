"""Figure of a restoration bundle on unseen panel images: input | best classical | ours (1 sample) | truth, PSNR in
the file's caption table printed to stdout.

    python scripts/restoration_figure.py --scenario sr4 --images colin27_t1 macaque_t1 ct_small retina \
        --output docs/benchmarks/restoration_sr4.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from monai_medgen.tasks.baselines import denoising_parameters
from monai_medgen.tasks.evaluation import BUNDLES, SCENARIOS, _psnr, baselines, degrade
from monai_medgen.tasks.loading import load_restoration_bundle
from monai_medgen.tasks.panel import load_panel, tuning_image
from monai_medgen.tasks.sampling import ResidualRestorer

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", default="sr4", choices=list(SCENARIOS))
    p.add_argument("--images", nargs="+", default=["colin27_t1", "macaque_t1", "ct_small", "retina"])
    p.add_argument("--size", type=int, default=160, help="tile side in the figure")
    p.add_argument("--output", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    family = SCENARIOS[args.scenario]
    bundle = load_restoration_bundle(ROOT / "bundles" / BUNDLES[family])
    restorer = ResidualRestorer(bundle.inferer, bundle.network, family, bundle.num_steps, bundle.start_time)
    params = {}
    if family == "denoise":
        t = tuning_image()
        m, e = degrade(args.scenario, t, seed=7)
        params = denoising_parameters(e["sigma"], e["sp"], (m, t))
    rows, table = [], ["| image | input | best classical | ours (1 sample) |", "|---|---|---|---|"]
    for i, (name, truth) in enumerate(load_panel(args.images).items()):
        measured, extra = degrade(args.scenario, truth, seed=100 + i)
        classical = baselines(args.scenario, measured, extra, truth.shape[2:], params)
        best_name, (best, _) = max(classical.items(), key=lambda kv: _psnr(kv[1][0], truth, extra.get("mask")))
        project = (lambda x, e=extra: e["op"].project(x, e["low"])) if args.scenario == "sr4" else None
        ours, _ = restorer(measured, project=project, mask=extra.get("mask"), generator=torch.Generator().manual_seed(i),
                           value_range=(0.0, 1.0))
        shown = F.interpolate(extra["low"], size=truth.shape[2:], mode="nearest") if args.scenario == "sr4" else measured
        tiles = [shown, best, ours, truth]
        row = torch.cat([F.interpolate(t.clamp(0, 1), size=(args.size, args.size), mode="bilinear") for t in tiles], -1)
        rows.append(row[0, 0])
        table.append(f"| {name} | {_psnr(shown, truth, extra.get('mask')):.2f} | {best_name} {_psnr(best, truth, extra.get('mask')):.2f} | "
                     f"{_psnr(ours, truth, extra.get('mask')):.2f} |")
    grid = (torch.cat(rows, 0).numpy() * 255).round().astype(np.uint8)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(args.output)
    print(f"{args.output}: columns input | best classical | ours (1 sample) | truth; PSNR (dB):\n")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
