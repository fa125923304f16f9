"""Restoration bundles against the strongest classical baselines on the unseen panel (monai_medgen.tasks.panel).

One CPU thread for everything. See :mod:`monai_medgen.tasks.evaluation` for the scenarios and metrics.

    python scripts/evaluate_restoration.py                       # all scenarios, markdown to stdout
    python scripts/evaluate_restoration.py --scenarios sr4 --images colin27_t1 retina --num-samples 4
    python scripts/evaluate_restoration.py --output docs/benchmarks/restoration_panel.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from monai_medgen.tasks.evaluation import BUNDLES, SCENARIOS, evaluate_panel
from monai_medgen.tasks.loading import load_restoration_bundle, newest_checkpoint
from monai_medgen.tasks.panel import PANEL

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    p.add_argument("--images", nargs="+", default=list(PANEL), choices=list(PANEL))
    p.add_argument("--num-samples", type=int, default=4, help="samples whose mean is scored (besides one sample)")
    p.add_argument("--num-steps", type=int, default=None, help="network calls per sample (default: the bundle's)")
    p.add_argument(
        "--start-time", type=float, default=None, help="noise level after the first step (default: bundle's)"
    )
    p.add_argument("--bundles-dir", default=str(ROOT / "bundles"))
    p.add_argument(
        "--from-checkpoints",
        action="store_true",
        help="use the newest training checkpoint under <bundle>/runs/checkpoints (EMA) instead of models/model.pt",
    )
    p.add_argument(
        "--self-ensemble",
        choices=("bundle", "on", "off"),
        default="bundle",
        help="the mean of several samples drawn in flipped / transposed frames (default: the bundle's setting)",
    )
    p.add_argument(
        "--adapt-steps",
        type=int,
        default=None,
        help="denoising: SURE adaptation steps per image (default: the bundle's adapt_steps; 0: off)",
    )
    p.add_argument("--output", default=None, help="also write the markdown tables here")
    p.add_argument("--json", default=None, help="write every row as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    text_all, rows_all = [], []
    for family in dict.fromkeys(SCENARIOS[s] for s in args.scenarios):
        folder = Path(args.bundles_dir) / BUNDLES[family]
        weights = newest_checkpoint(folder) if args.from_checkpoints else None
        bundle = load_restoration_bundle(folder, weights)
        if args.self_ensemble != "bundle":
            bundle.inferer.self_ensemble = args.self_ensemble == "on"
        if args.adapt_steps is not None and family == "denoise":
            bundle.inferer.adapt_steps = args.adapt_steps
        text, rows, _ = evaluate_panel(
            {family: (bundle.network, bundle.inferer)},
            [s for s in args.scenarios if SCENARIOS[s] == family],
            args.images,
            num_samples=args.num_samples,
            num_steps=args.num_steps or bundle.num_steps,
            start_time=args.start_time or bundle.start_time,
        )
        text_all.append(f"## {bundle.name}" + (f" (weights: {weights})" if weights else "") + "\n" + text)
        rows_all += rows
    text = "\n\n".join(text_all)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(rows_all, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
